"""Asynchronous FedBuff mode: staleness functions, the weighting of folded updates, refusals, resume, end to end."""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path

import grpc
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from fedstream.common.wire.manifest import decode_state, encode_state
from fedstream.common.proto import coordinator_pb2 as pb
from fedstream.common.wire.protocol import PROTOCOL_VERSION
from fedstream.common.tasks import load_task
from fedstream.common.wire.framing import Crc32, iter_chunks
from fedstream.server.publication.checkpoint import load_checkpoint
from fedstream.server.core.client_settings import apply_client_settings, parse_client_settings
from fedstream.server.core.config import ServerConfig
from fedstream.server.core.coordinator import Coordinator
from fedstream.server.core.errors import Duplicate
from fedstream.server.core.errors import Refusal
from fedstream.server.modes.buffered_async import AsyncSettings, BufferedAsync
from fedstream.server.aggregation.staleness import STALENESS, make_staleness
from fedstream.server.aggregation.strategies import make_strategy
from tests.harness import start_client, start_server, wait_all


# ----- staleness functions -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("s", [0, 1, 2, 3, 7, 50, 1000])
def test_staleness_functions_match_their_formulas(s: int) -> None:
    assert make_staleness("constant")(s) == 1.0
    assert make_staleness("sqrt")(s) == pytest.approx(1 / math.sqrt(1 + s), rel=1e-12)
    for a in (0.25, 0.5, 1.0, 2.0):
        assert make_staleness("poly", a)(s) == pytest.approx((1 + s) ** -a, rel=1e-12)
    assert make_staleness("poly", 0.5)(s) == pytest.approx(make_staleness("sqrt")(s), rel=1e-12)


def test_staleness_functions_are_one_when_fresh_and_non_increasing() -> None:
    for name in STALENESS:
        f = make_staleness(name, 1.5)
        values = [f(s) for s in range(40)]
        assert values[0] == 1.0
        assert all(a >= b for a, b in zip(values, values[1:])), name
        with pytest.raises(ValueError, match="staleness must be >= 0"):
            f(-1)
    with pytest.raises(ValueError, match="available: constant, sqrt, poly"):
        make_staleness("linear")
    with pytest.raises(ValueError, match="--staleness-exponent"):
        make_staleness("poly", float("nan"))


def test_client_settings_parse_and_override_the_task_config() -> None:
    settings = parse_client_settings(["client-7:local_epochs=1,batch_size=16", ("client-2", "slowdown=5"),
                                      "client-7:learning_rate=0.01"])
    assert settings == {"client-7": {"local_epochs": "1", "batch_size": "16", "learning_rate": "0.01"},
                        "client-2": {"slowdown": "5"}}
    config = apply_client_settings(pb.TrainConfig(local_epochs=3, batch_size=32, learning_rate=0.05),
                                   settings["client-7"])
    assert (config.local_epochs, config.batch_size, config.learning_rate) == (1, 16, 0.01)
    assert dict(apply_client_settings(pb.TrainConfig(), settings["client-2"]).options) == {"slowdown": "5"}
    with pytest.raises(ValueError, match="batch_size must be > 0"):
        parse_client_settings(["client-1:batch_size=0"])
    with pytest.raises(ValueError, match="'many' is not an integer"):
        parse_client_settings(["client-1:local_epochs=many"])
    with pytest.raises(ValueError, match="CLIENT_ID:KEY=VALUE"):
        parse_client_settings(["local_epochs=1"])


def test_server_sends_per_client_settings_with_the_task(tmp_path: Path) -> None:
    config = ServerConfig(run_dir=tmp_path / "run", seed=1,
                          client_settings=parse_client_settings(["slow:local_epochs=1,batch_size=8,slowdown=5"]))
    coord = Coordinator(load_task("digits"), make_strategy("fedavg"), config, BufferedAsync())
    coord.mode.started = True
    slow, fast = (coord.next_task(_join(coord, c, 10), 0).config for c in ("slow", "fast"))
    assert (slow.local_epochs, slow.batch_size, slow.options["slowdown"]) == (1, 8, "5")
    assert (fast.local_epochs, fast.batch_size, "slowdown" in fast.options) == (3, 32, False)
    coord.finish()


# ----- the coordinator driven directly (no network) --------------------------------------------------------------

def _join(coord: Coordinator, client_id: str, examples: int) -> str:
    reply = coord.join(pb.JoinRequest(client_id=client_id, protocol_version=PROTOCOL_VERSION, codecs=["raw"],
                                      num_examples=examples))
    return reply.session_id


def _deliver(coord: Coordinator, session: str, task: pb.Task, delta: dict[str, torch.Tensor], examples: int,
             upload_id: str | None = None) -> None:
    """What the servicer does for one UploadUpdate stream: header, chunks, trailer."""
    manifest, buffers = encode_state(delta, "raw")
    header = pb.UpdateHeader(session_id=session, round=task.round, base_version=task.version, num_examples=examples,
                             manifest=manifest, upload_id=upload_id or uuid.uuid4().hex)
    sink = coord.begin_upload(header)
    crc = Crc32()
    for piece in iter_chunks(buffers, 1 << 14):
        crc.update(piece)
        sink.write(piece)
    coord.finish_upload(sink, pb.Trailer(crc32=crc.value, total_bytes=crc.nbytes))


def _download(coord: Coordinator, session: str, version: int) -> OrderedDict[str, torch.Tensor]:
    stream = coord.open_download(session, version)
    data = bytearray()
    for piece in stream.chunks:
        data += bytes(piece)
    return decode_state(stream.header.manifest, data)


def _random_delta(reference: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) * 0.01 for k, v in reference.items()}


def _wait_version(coord: Coordinator, version: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while coord.version < version:
        assert time.monotonic() < deadline, f"version {version} was not published; at {coord.version}"
        time.sleep(0.01)


def _close(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    for name, tensor in expected.items():
        assert torch.allclose(actual[name].double(), tensor, atol=1e-6, rtol=0), name


def test_fedbuff_weights_updates_by_examples_and_staleness_and_refuses_stale_ones(tmp_path: Path) -> None:
    task = load_task("digits")
    config = ServerConfig(rounds=3, min_clients=1, seed=5, run_dir=tmp_path / "run", round_timeout=60)
    settings = AsyncSettings(buffer_size=2, staleness=make_staleness("poly", 1.0), max_staleness=1)
    coord = Coordinator(task, make_strategy("fedavg"), config, BufferedAsync(settings))
    v0 = coord.global_state
    x0 = {k: v.double().clone() for k, v in v0.items()}
    loop = threading.Thread(target=coord.run, daemon=True)
    loop.start()
    try:
        sa, sb, sc, sd = (_join(coord, c, n) for c, n in (("a", 10), ("b", 30), ("c", 20), ("d", 5)))
        ta, tb, tc, td = (coord.next_task(s, 10) for s in (sa, sb, sc, sd))
        assert [t.kind for t in (ta, tb, tc, td)] == [pb.Task.TRAIN] * 4
        assert [t.version for t in (ta, tb, tc, td)] == [0] * 4
        assert len({t.round for t in (ta, tb, tc, td)}) == 4, "each task gets its own number"
        da, db, dc, da2 = (_random_delta(x0, seed) for seed in (1, 2, 3, 4))

        _deliver(coord, sa, ta, da, 10)
        _deliver(coord, sb, tb, db, 30)
        _wait_version(coord, 1)
        x1 = {k: x0[k] + (10 * da[k].double() + 30 * db[k].double()) / 40 for k in x0}
        _close(x1, coord.global_state)

        _close(x0, _download(coord, sa, 0))  # the previous version is still served, unchanged
        ta2 = coord.next_task(sa, 0)
        assert ta2.version == 1
        _deliver(coord, sc, tc, dc, 20)  # trained on version 0: staleness 1, factor (1+1)^-1
        upload_id = uuid.uuid4().hex
        _deliver(coord, sa, ta2, da2, 10, upload_id)
        _wait_version(coord, 2)
        issued_by_v2 = coord.mode.tasks_issued
        x2 = {k: x1[k] + (20 * 0.5 * dc[k].double() + 10 * da2[k].double()) / 30 for k in x0}
        _close(x2, coord.global_state)
        _close(x0, v0)  # version 0's tensors were never written to while clients could download them

        with pytest.raises(Duplicate):
            _deliver(coord, sa, ta2, da2, 10, upload_id)
        with pytest.raises(Refusal) as stale:
            _deliver(coord, sd, td, da, 5)
        assert stale.value.code == grpc.StatusCode.FAILED_PRECONDITION.name
        assert "trained on version 0, 2 versions behind the current version 2" in stale.value.message
        assert "--max-staleness" in stale.value.message
        with pytest.raises(Refusal) as gone:
            coord.open_download(sa, 0)
        assert gone.value.code == grpc.StatusCode.FAILED_PRECONDITION.name and "no longer served" in gone.value.message
        with pytest.raises(Refusal, match="it holds no task"):
            _deliver(coord, sa, ta, da, 10)
        ta3 = coord.next_task(sa, 0)
        with pytest.raises(Refusal, match=f"sent an update for task {ta.round}; its current task is {ta3.round}"):
            _deliver(coord, sa, ta, da, 10)
    finally:
        coord.finish()
        loop.join(timeout=10)

    records = coord.runlog.records()
    assert [(r["version"], r["clients"]) for r in records] == [(1, 2), (2, 2)]
    assert (records[0]["staleness_mean"], records[0]["staleness_max"]) == (0.0, 0)
    assert (records[1]["staleness_mean"], records[1]["staleness_max"]) == (0.5, 1)
    assert records[1]["refused_stale"] == 0
    assert sorted((f["client"], f["staleness"]) for f in records[1]["folded"]) == [("a", 0), ("c", 1)]

    resumed = Coordinator(task, make_strategy("fedavg"), config, BufferedAsync(settings))
    assert resumed.version == 2 and resumed.completed_rounds == 2
    _close(x2, resumed.global_state)
    saved = load_checkpoint(config.run_dir).extra
    assert saved["mode"] == "async" and saved["tasks_issued"] >= issued_by_v2
    assert resumed.mode.tasks_issued == saved["tasks_issued"], "task numbers continue after a restart"
    session = _join(resumed, "a", 10)
    assert resumed.next_task(session, 0).kind == pb.Task.WAIT, "no work before the run (and --min-clients) starts"
    resumed.finish()


def test_async_mode_refuses_strategies_that_need_every_update() -> None:
    class Median(type(make_strategy("fedavg"))):
        name = "median-like"
        streaming = False

    with pytest.raises(ValueError, match="needs a streaming strategy"):
        Coordinator(load_task("digits"), Median(), ServerConfig(run_dir=Path("/nonexistent/never-created")),
                    BufferedAsync())


# ----- end to end: real server and client processes --------------------------------------------------------------

def _offline_fedbuff(records: list[dict], updates_dir: Path, seed: int, exponent: float) -> dict[str, torch.Tensor]:
    """x_{v+1} = x_v + Σ n·(1+s)^-a·Δ / Σ n over each version's folded updates, read from the clients' copies."""
    torch.manual_seed(seed)
    state = {k: v.double().clone() for k, v in load_task("digits").make_model().state_dict().items()}
    for record in records:
        total = sum(f["num_examples"] for f in record["folded"])
        step = {k: torch.zeros_like(v) for k, v in state.items()}
        for f in record["folded"]:
            path = updates_dir / f"{f['client']}-round{f['task']}.safetensors"
            with safe_open(str(path), "pt") as handle:
                meta = handle.metadata()
            assert int(meta["base_version"]) == f["base_version"] == record["version"] - 1 - f["staleness"]
            delta = load_file(str(path))
            factor = f["num_examples"] * (1 + f["staleness"]) ** -exponent / total
            for k in step:
                step[k] += delta[k].double() * factor
        state = {k: state[k] + step[k] for k in state}
    return state


@pytest.mark.slow
def test_async_federation_shows_staleness_and_equals_offline_fedbuff(tmp_path: Path) -> None:
    run_dir = tmp_path / "async"
    updates = tmp_path / "updates"
    # 16 versions: long enough for the slowed client's updates to land, stale, before a fast client fills them all
    server = start_server(run_dir, "--mode", "async", "--buffer-size", "2", "--rounds", "16", "--staleness", "poly",
                          "--staleness-exponent", "1", "--max-staleness", "20", "--seed", "11")
    try:
        procs = [start_client(server, "--partition", f"{i}/3", "--device", "cpu", "--save-updates", str(updates),
                              *(("--slowdown", "3") if i == 2 else ())) for i in range(3)]
        assert server.wait(timeout=120) == 0, server.log()[-3000:]
        codes = wait_all(procs, timeout=60)
        assert codes == [0] * 3, (codes, [server.client_log(i)[-2000:] for i in range(3)])
    finally:
        server.stop()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["version"] for r in records] == list(range(1, 17))
    assert [r["round"] for r in records] == list(range(1, 17))
    for r in records:
        assert r["clients"] == 2 == len(r["folded"])
        assert r["staleness_max"] == max(f["staleness"] for f in r["folded"])
        assert r["staleness_mean"] == pytest.approx(sum(f["staleness"] for f in r["folded"]) / 2)
        assert r["bytes_up"] > 0 and isinstance(r["eval_accuracy"], float) and r["seconds"] > 0
    assert max(r["staleness_max"] for r in records) >= 1, records
    assert records[-1]["eval_accuracy"] > 0.8
    final = load_file(str(run_dir / "model.safetensors"))
    expected = _offline_fedbuff(records, updates, seed=11, exponent=1.0)
    for name, tensor in expected.items():
        assert torch.allclose(final[name].double(), tensor, atol=1e-5, rtol=0), name


@pytest.mark.slow
def test_async_local_dp_counts_each_clients_updates_and_ends_before_one_passes_the_target(tmp_path: Path) -> None:
    """σ = 2 at q = 1: a client's 4th update would cost ε 4.73 > 4.5, so each client sends at most 3."""
    run_dir = tmp_path / "async-dp"
    server = start_server(run_dir, "--mode", "async", "--buffer-size", "2", "--rounds", "50", "--dp", "local",
                          "--clip", "1.0", "--noise-multiplier", "2.0", "--target-epsilon", "4.5")
    try:
        procs = [start_client(server, "--partition", f"{i}/2", "--device", "cpu") for i in range(2)]
        assert server.wait(timeout=120) == 0, server.log()[-3000:]
        assert wait_all(procs, timeout=60) == [0, 0], [server.client_log(i)[-2000:] for i in range(2)]
    finally:
        server.stop()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    folded: dict[str, int] = {}
    for r in records:
        for f in r["folded"]:
            folded[f["client"]] = folded.get(f["client"], 0) + 1
    assert 1 <= max(folded.values()) <= 3, folded
    assert all(r["epsilon"] <= 4.5 for r in records) and records[-1]["noise_multiplier"] == 2.0
    assert "next update would raise its ε" in server.log()
    assert any("next update would raise its ε" in server.client_log(i) for i in range(2))
