#!/usr/bin/env bash
# The checks of one GPU lease, in one go: environment, the GPU client path (gpu_path.py), the whole test suite
# with end-to-end clients on CUDA, and the round benchmark with CUDA clients beside CPU clients.
# Run from the repository root on a CUDA machine; results go to $OUT (default ./gpu-check).
set -uo pipefail
OUT=${OUT:-gpu-check}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{ nvidia-smi -L; nproc; $PY -c "import torch, grpc, google.protobuf as pb, fedstream.common
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'grpc', grpc.__version__, 'protobuf', pb.__version__)"
} 2>&1 | tee "$OUT/env.txt"
timeout "${GPU_PATH_S:-150}" $PY benchmarks/gpu_path.py --params 25M,650M --out "$OUT/gpu_path.json" 2>&1 \
  | tee "$OUT/gpu_path.txt"
FEDSTREAM_TEST_DEVICE=cuda timeout "${TESTS_S:-210}" $PY -m pytest -q -n "${WORKERS:-8}" -p no:cacheprovider \
  --durations=15 2>&1 | tee "$OUT/pytest_cuda.txt" | tail -40
for device in cuda cpu; do
  timeout "${BENCH_S:-100}" $PY benchmarks/round_bench.py --systems grpc,fedstream --clients 1,4,8 --rounds 6 \
    --client-device "$device" --workdir /tmp/round-bench 2>&1 | tee "$OUT/round_bench_$device.txt" | tail -22
done
