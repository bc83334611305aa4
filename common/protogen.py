"""Regenerates the committed gRPC/protobuf code from protos/ (run: python -m fedstream.common.protogen)."""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent.parent / "protos"
PROTO_FILES = ("fedstream/v1/coordinator.proto", "fedstream/v1/secagg.proto")
GENERATED_DIR = Path(__file__).resolve().parent / "proto"
_PROTOC_IMPORT = "from fedstream.v1 import coordinator_pb2"
_PACKAGE_IMPORT = "from fedstream.common.proto import coordinator_pb2"


def generate(out_dir: Path, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Runs protoc into out_dir and rewrites imports so the code lives in fedstream.common.proto."""
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    staging = out_dir / "_staging"
    staging.mkdir(parents=True, exist_ok=True)
    include = str(Path(protoc.__file__).parent / "_proto")
    for proto in PROTO_FILES:
        code = protoc.main(
            ["grpc_tools.protoc", f"-I{proto_root}", f"-I{include}", f"--python_out={staging}",
             f"--pyi_out={staging}", f"--grpc_python_out={staging}", str(proto_root / proto)]
        )
        if code != 0:
            raise RuntimeError(f"protoc failed on {proto} with exit code {code}")
    written = []
    for produced in sorted((staging / "fedstream" / "v1").iterdir()):
        text = produced.read_text().replace(_PROTOC_IMPORT, _PACKAGE_IMPORT)
        target = out_dir / produced.name
        target.write_text(text)
        written.append(target)
    for leftover in sorted(staging.rglob("*"), reverse=True):
        leftover.unlink() if leftover.is_file() else leftover.rmdir()
    staging.rmdir()
    return written


if __name__ == "__main__":
    for path in generate(GENERATED_DIR):
        print(path, file=sys.stderr)
