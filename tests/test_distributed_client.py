"""A client that is a cluster: ranks launched by torchrun train as one client next to an ordinary one.

Two gloo ranks on the CPU everywhere; on a CUDA machine also nccl, one rank per GPU (one rank on a one-GPU box)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from fedstream.common.training.partition import partition_indices
from fedstream.common.tasks import load_task
from tests.harness import env, start_client, start_server, wait_all

pytestmark = pytest.mark.slow
SEED = 7
ROUNDS = 2


GLOO = pytest.param("cpu", 2, "gloo", id="gloo")
ONE_RANK = pytest.param("cpu", 1, "gloo", id="gloo-one-rank")
NCCL = pytest.param("cuda", max(torch.cuda.device_count(), 1), "nccl", id="nccl",
                    marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"))


def start_cluster_client(server, updates: Path, log_path: Path, device: str = "cpu", ranks: int = 2) -> subprocess.Popen:
    """`torchrun --standalone --nproc-per-node R -m fedstream.client ...` as client 'cluster' on partition 0/2."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
               "-m", "fedstream.client", "--server", server.address, "--insecure", "--connect-timeout", "60",
               "--partition", "0/2", "--client-id", "cluster", "--device", device, "--save-updates", str(updates)]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**env(), "OMP_NUM_THREADS": "1"})
    server.clients.append(process)
    return process


def saved_updates(directory: Path) -> dict[int, list[tuple[str, dict[str, torch.Tensor], int, int]]]:
    by_round = defaultdict(list)
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        by_round[int(meta["round"])].append((meta["client_id"], load_file(str(path)), int(meta["num_examples"]),
                                             int(meta["base_version"])))
    return by_round


@pytest.mark.parametrize("device,ranks,backend", [GLOO, ONE_RANK, NCCL])
def test_torchrun_client_ranks_aggregate_as_one_client(tmp_path: Path, device: str, ranks: int, backend: str) -> None:
    run_dir, updates = tmp_path / "run", tmp_path / "updates"
    server = start_server(run_dir, "--rounds", str(ROUNDS), "--min-clients", "2", "--seed", str(SEED),
                          "--round-timeout", "120")
    cluster_log = tmp_path / "cluster.log"
    try:
        cluster = start_cluster_client(server, updates, cluster_log, device, ranks)
        ordinary = start_client(server, "--partition", "1/2", "--device", "cpu", "--save-updates", str(updates))
        assert server.wait(timeout=180) == 0, server.log()[-3000:]
        codes = wait_all([cluster, ordinary], timeout=60)
        assert codes == [0, 0], (codes, cluster_log.read_text()[-3000:], server.client_log(1)[-2000:])
    finally:
        server.stop()

    log = cluster_log.read_text()
    task = load_task("digits")
    partition = len(partition_indices(task.train_labels, 0, 2))
    for rank in range(ranks):
        where = "cpu" if device == "cpu" else f"cuda:{rank}"
        assert f"rank {rank}/{ranks} on {where} ({backend})" in log, log[-3000:]
        shard = len(range(rank, partition, ranks))
        assert log.count(f"rank {rank}/{ranks} trained on {shard} of the client's examples") == ROUNDS, log[-3000:]
    assert log.count("joined run") == 1, "only rank 0 talks to the coordinator"

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["round"], r["clients"]) for r in records] == [(1, 2), (2, 2)]
    by_round = saved_updates(updates)
    torch.manual_seed(SEED)
    state = {k: v.double() for k, v in task.make_model().state_dict().items()}
    for number in range(1, ROUNDS + 1):
        items = by_round[number]
        assert sorted(client for client, *_ in items) == ["client-1", "cluster"]
        assert all(base == number - 1 for *_, base in items)
        examples = {client: n for client, _, n, _ in items}
        assert examples["cluster"] == partition, "rank 0 reports the whole partition, not its shard"
        total = sum(examples.values())
        state = {k: v + sum(delta[k].double() * n for _, delta, n, _ in items) / total for k, v in state.items()}
    final = load_file(str(run_dir / "model.safetensors"))
    for name, tensor in state.items():
        assert torch.allclose(final[name].double(), tensor, atol=1e-6, rtol=0), name
