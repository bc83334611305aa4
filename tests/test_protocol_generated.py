"""The committed generated code must be exactly what protoc makes from protos/ today."""

from pathlib import Path

from fedstream.common import protogen


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    fresh = protogen.generate(tmp_path)
    assert fresh, "protoc produced nothing"
    for path in fresh:
        committed = protogen.GENERATED_DIR / path.name
        assert committed.exists(), f"{committed} is missing: run python -m fedstream.common.protogen"
        assert committed.read_text() == path.read_text(), (
            f"{committed.name} drifted from protos/: run python -m fedstream.common.protogen and commit"
        )
