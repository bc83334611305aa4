"""Relay tiers: the top's rules for relays (driven directly), the relay mode's partial sum, and real processes:
FedAvg over relays equals flat FedAvg over the leaves; a relay killed mid-upload; a leaf killed under a relay."""

from __future__ import annotations

import glob
import json
import socket
import subprocess
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from fedstream.common.proto import coordinator_pb2 as pb
from fedstream.common.tasks import load_task
from fedstream.common.wire.framing import Crc32, iter_chunks
from fedstream.common.wire.manifest import encode_state
from fedstream.common.wire.protocol import PROTOCOL_VERSION
from fedstream.server.aggregation.strategies import make_strategy
from fedstream.server.core.config import ServerConfig
from fedstream.server.core.coordinator import Coordinator
from fedstream.server.core.errors import Refusal
from fedstream.server.modes import AsyncSettings, BufferedAsync, SyncRounds
from fedstream.server.modes.relay import RelayRounds, UpstreamError, upstream_model
from fedstream.server.modes.sync_rounds import RELAY_FAILED, ROUND_SECONDS_LEFT
from tests.harness import FEDSTREAM, ServerProcess, env, start_client, start_server, wait_all

TASK = ["--task", "digits", "--task-option", "hidden=16"]


# ----- the top's rules, driven directly ----------------------------------------------------------------------

def _join(coord: Coordinator, client_id: str, examples: int = 0, relay: bool = False) -> str:
    return coord.join(pb.JoinRequest(client_id=client_id, protocol_version=PROTOCOL_VERSION, codecs=["raw"],
                                     num_examples=examples, capabilities=["relay"] if relay else [])).session_id


def _deliver(coord: Coordinator, session: str, task, delta: dict[str, torch.Tensor], examples: int,
             aggregated: int = 0) -> None:
    manifest, buffers = encode_state(delta, "raw")
    header = pb.UpdateHeader(session_id=session, round=task.round, base_version=task.version, num_examples=examples,
                             manifest=manifest, upload_id=uuid.uuid4().hex, aggregated_clients=aggregated)
    sink = coord.begin_upload(header)
    crc = Crc32()
    for piece in iter_chunks(buffers, 1 << 14):
        crc.update(piece)
        sink.write(piece)
    coord.finish_upload(sink, pb.Trailer(crc32=crc.value, total_bytes=crc.nbytes))


def _delta(reference: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) * 0.01 for k, v in reference.items()}


def _top(tmp_path: Path, strategy: str = "fedavg", mode=None, **config) -> Coordinator:
    settings = dict(rounds=1, min_clients=3, clients_per_round=3, seed=1, run_dir=tmp_path / "top", round_timeout=30,
                    relay_ids=frozenset({"r1", "r2"}), wait_for_clients=30)
    settings.update(config)
    return Coordinator(load_task("digits", {"hidden": "8"}), make_strategy(strategy), ServerConfig(**settings),
                       mode or SyncRounds())


def test_top_refuses_relays_it_cannot_combine_exactly(tmp_path: Path) -> None:
    coord = _top(tmp_path)
    with pytest.raises(Refusal, match="only from the ids in --relay-ids \\(r1, r2\\): add r9") as denied:
        _join(coord, "r9", relay=True)
    assert denied.value.code == "PERMISSION_DENIED"
    _join(coord, "r1", relay=True)
    coord.finish()
    with pytest.raises(Refusal, match="median or Krum over relays' means"):
        _join(_top(tmp_path / "m", "median"), "r1", relay=True)
    with pytest.raises(Refusal, match="--mode async"):
        _join(_top(tmp_path / "a", mode=BufferedAsync(AsyncSettings()), clients_per_round=0), "r1", relay=True)
    with pytest.raises(Refusal, match="--federated-eval"):
        _join(_top(tmp_path / "e", federated_eval=True), "r1", relay=True)
    _join(_top(tmp_path / "any", relay_ids=frozenset({"*"})), "anyone", relay=True)


def test_relay_partial_sums_weigh_as_their_leaves_and_the_record_names_the_relays(tmp_path: Path) -> None:
    """Two relays and one direct client: the new model is Σ nᵢΔᵢ / Σ nᵢ with each relay's Σ nᵢ, though a relay's
    claim is far above the median-based cap a direct client gets; a leaf cannot pose as a partial sum."""
    coord = _top(tmp_path, weight_cap_factor=2.0)
    x0 = {k: v.double().clone() for k, v in coord.global_state.items()}
    loop = threading.Thread(target=coord.run, daemon=True)
    loop.start()
    try:
        s1, s2, leaf = _join(coord, "r1", relay=True), _join(coord, "r2", relay=True), _join(coord, "leaf", 50)
        t1, t2, tl = (coord.next_task(s, 10) for s in (s1, s2, leaf))
        assert [t.kind for t in (t1, t2, tl)] == [pb.Task.TRAIN] * 3
        assert 0 < float(t1.config.options[ROUND_SECONDS_LEFT]) <= 30
        assert ROUND_SECONDS_LEFT not in tl.config.options
        d1, d2, dl = (_delta(x0, seed) for seed in (1, 2, 3))
        with pytest.raises(Refusal, match="only a session that joined with the \"relay\" capability"):
            _deliver(coord, leaf, tl, dl, 50, aggregated=4)
        with pytest.raises(Refusal, match="aggregated_clients=0"):
            _deliver(coord, s1, t1, d1, 700, aggregated=0)
        with pytest.raises(Refusal, match="--max-examples"):
            _deliver(coord, s1, t1, d1, coord.config.max_examples + 1, aggregated=3)
        _deliver(coord, s1, t1, d1, 700, aggregated=3)
        _deliver(coord, s2, t2, d2, 300, aggregated=2)
        _deliver(coord, leaf, tl, dl, 50)
        deadline = time.monotonic() + 30
        while coord.version < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        coord.finish()
        loop.join(timeout=10)
    expected = {k: x0[k] + (700 * d1[k].double() + 300 * d2[k].double() + 50 * dl[k].double()) / 1050 for k in x0}
    for name, tensor in expected.items():
        assert torch.allclose(coord.global_state[name].double(), tensor, atol=1e-6, rtol=0), name
    record = coord.runlog.records()[0]
    assert record["relays"] == {"r1": 3, "r2": 2} and record["leaf_clients"] == 6
    assert record["clipped_weight"] == []


def test_a_relay_reports_a_failed_round_and_is_dropped_at_once(tmp_path: Path) -> None:
    coord = _top(tmp_path, min_clients=1, clients_per_round=2)
    loop = threading.Thread(target=coord.run, daemon=True)
    loop.start()
    try:
        s1, leaf = _join(coord, "r1", relay=True), _join(coord, "leaf", 10)
        t1, tl = coord.next_task(s1, 10), coord.next_task(leaf, 10)
        with pytest.raises(Refusal, match="only relays report failed rounds"):
            coord.exchange(leaf, tl.round, RELAY_FAILED, b"no")
        with pytest.raises(Refusal, match="round 7 failed; that round is not open"):
            coord.exchange(s1, 7, RELAY_FAILED, b"no")
        coord.exchange(s1, t1.round, RELAY_FAILED, b"1 of its clients delivered")
        _deliver(coord, leaf, tl, _delta(dict(coord.global_state), 4), 10)
        deadline = time.monotonic() + 10
        while coord.version < 1:
            assert time.monotonic() < deadline, "the round waited for the relay that reported failure"
            time.sleep(0.01)
    finally:
        coord.finish()
        loop.join(timeout=10)
    record = coord.runlog.records()[0]
    assert record["dropped"] == {"r1": "relay reported failure: 1 of its clients delivered"}
    assert "relays" not in record


# ----- the relay mode, with a fake upstream --------------------------------------------------------------------

class FakeUpstream:
    def __init__(self, tasks: list) -> None:
        self.tasks = tasks
        self.uploads: list[tuple] = []
        self.failures: list[tuple[int, str]] = []
        self.finished = threading.Event()
        self.bytes_up = self.bytes_down = 0
        self.left = ""

    def next_task(self):
        return self.tasks.pop(0) if self.tasks else SimpleNamespace(kind="finish", message="done")

    def download(self, version: int):
        raise UpstreamError("the fake upstream serves no versions")

    def upload(self, round_number, version, mean, num_examples, aggregated_clients, metrics) -> int:
        self.uploads.append((round_number, version, {k: v.clone() for k, v in mean.items()}, num_examples,
                             aggregated_clients, dict(metrics)))
        return 1

    def report_failure(self, round_number: int, reason: str) -> None:
        self.failures.append((round_number, reason))

    def leave(self, reason: str) -> None:
        self.left = reason


def test_relay_uploads_the_weighted_mean_with_its_examples_and_reports_short_rounds(tmp_path: Path) -> None:
    state = load_task("digits", {"hidden": "8"}).federated_state(load_task("digits", {"hidden": "8"}).make_model())
    config = {"local_epochs": 1, "batch_size": 8, "learning_rate": 0.1, "proximal_mu": 0.0, "clip_norm": 0.0,
              "noise_multiplier": 0.0, "options": {ROUND_SECONDS_LEFT: "20", "seed": "5"}}
    tasks = [SimpleNamespace(kind="train", round=4, version=0, config=config, message=""),
             SimpleNamespace(kind="train", round=5, version=0, config=config, message="")]
    upstream = FakeUpstream(tasks)
    mode = RelayRounds(upstream)
    coord = Coordinator(upstream_model(state), make_strategy("fedavg"),
                        ServerConfig(min_clients=2, round_timeout=3, run_dir=tmp_path / "relay", rounds=10**9), mode)
    assert mode.local_seconds(tasks[0]) == 3.0  # --round-timeout; 20 s left upstream less 2 s margin is later
    short = SimpleNamespace(config={"options": {ROUND_SECONDS_LEFT: "2.5"}})
    assert mode.local_seconds(short) == pytest.approx(1.5)  # 2.5 s left less max(1 s, 10 %, 2 × last upload)
    sa, sb = _join(coord, "a", 30), _join(coord, "b", 10)
    loop = threading.Thread(target=coord.run, daemon=True)
    loop.start()
    try:
        ta, tb = coord.next_task(sa, 10), coord.next_task(sb, 10)
        assert (ta.round, ta.version, ta.config.batch_size, dict(ta.config.options)) == (4, 0, 8, {"seed": "5"})
        da, db = _delta(dict(state), 1), _delta(dict(state), 2)
        _deliver(coord, sa, ta, da, 30)
        _deliver(coord, sb, tb, db, 10)
        ta5 = coord.next_task(sa, 10)  # round 5: only a delivers; the relay needs 2
        assert ta5.round == 5
        _deliver(coord, sa, ta5, da, 30)
        loop.join(timeout=20)
    finally:
        coord.finish()
    (number, version, mean, examples, leaves, metrics), = upstream.uploads
    assert (number, version, examples, leaves) == (4, 0, 40, 2)
    for name in state:
        expected = (30 * da[name].double() + 10 * db[name].double()) / 40
        assert torch.allclose(mean[name].double(), expected, atol=1e-7, rtol=0), name
    assert upstream.failures == [(5, "1 of relay's 2 client(s) delivered, fewer than its --min-clients 2")]
    assert upstream.left == "finished"
    lines = [json.loads(line) for line in (tmp_path / "relay" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["round"], r["uploaded"], r["clients"]) for r in lines] == [(4, True, 2), (5, False, 1)]


def test_a_relay_adopts_only_versions_shaped_like_its_model(tmp_path: Path) -> None:
    state = OrderedDict(w=torch.zeros(2, 3))
    coord = Coordinator(upstream_model(state), make_strategy("fedavg"),
                        ServerConfig(run_dir=tmp_path / "relay"), RelayRounds(FakeUpstream([])))
    with pytest.raises(ValueError, match=r"tensor w as torch.float32 \[3, 2\]"):
        coord.adopt(3, OrderedDict(w=torch.zeros(3, 2)), [])
    coord.adopt(3, OrderedDict(w=torch.ones(2, 3)), [])
    assert coord.version == 3 and coord.publisher.versions() == [3]
    coord.finish()


# ----- real processes ------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_relay(top: ServerProcess, name: str, *args: str, port: int | None = None,
                timeout: float = 60.0) -> ServerProcess:
    """`fedstream relay` under top, on 127.0.0.1:port (a fresh port unless given: a restart reuses its address)."""
    run_dir = top.run_dir.parent / name
    port_file = top.run_dir.parent / f"{name}.port"
    port_file.unlink(missing_ok=True)
    log_path = top.run_dir.parent / f"{name}.log"
    address = f"127.0.0.1:{port or _free_port()}"
    with open(log_path, "a") as log:
        process = subprocess.Popen(FEDSTREAM + ["relay", "--upstream", top.address, "--address", address,
                                                "--insecure", "--upstream-insecure", "--client-id", name,
                                                "--run-dir", str(run_dir), "--port-file", str(port_file), *args],
                                   stdout=log, stderr=subprocess.STDOUT, env=env())
    top.clients.append(process)
    deadline = time.monotonic() + timeout
    while not (port_file.exists() and port_file.read_text().strip()):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"relay {name} did not start: {log_path.read_text()[-3000:]}")
        time.sleep(0.05)
    return ServerProcess(process, address, run_dir, log_path)


def _leaf(relay: ServerProcess, top: ServerProcess, index: int, leaves: int, saved: Path, *args: str):
    process = start_client(relay, *TASK, "--partition", f"{index}/{leaves}", "--client-id", f"leaf{index}",
                           "--device", "cpu", "--local-epochs", "1", "--save-updates", str(saved), *args,
                           log_name=f"leaf{index}")
    top.clients.append(process)
    return process


def _wait_log(process: ServerProcess, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in process.log():
        assert time.monotonic() < deadline, f"{text!r} not in {process.log_path.name}:\n{process.log()[-3000:]}"
        time.sleep(0.05)


def flat_fedavg(run_dir: Path, saved: Path, seed: int, rounds: int,
                counted=lambda number, leaf: True) -> dict[str, torch.Tensor]:
    """x ← x + Σ nᵢΔᵢ / Σ nᵢ over the leaves' saved deltas of each round, in float64, from the seeded model."""
    task = load_task("digits", {"hidden": "16"})
    torch.manual_seed(seed)
    x = {k: v.double().clone() for k, v in task.federated_state(task.make_model()).items()}
    for number in range(1, rounds + 1):
        total, acc = 0, {k: torch.zeros_like(v) for k, v in x.items()}
        for path in sorted(glob.glob(str(saved / f"*-round{number}.safetensors"))):
            with safe_open(path, "pt") as handle:
                meta = handle.metadata()
            if not counted(number, meta["client_id"]):
                continue
            delta = load_file(path)
            for k in acc:
                acc[k] += int(meta["num_examples"]) * delta[k].double()
            total += int(meta["num_examples"])
        for k in x:
            x[k] += acc[k] / total
    return x


def _assert_close(expected: dict[str, torch.Tensor], model: Path) -> None:
    final = load_file(str(model))
    worst = max(float((final[k].double() - v).abs().max()) for k, v in expected.items())
    assert worst <= 1e-6, f"final model differs from flat FedAvg over the leaves by {worst:.3g}"


@pytest.mark.slow
def test_fedavg_over_two_relays_equals_flat_fedavg_over_their_leaves(tmp_path: Path) -> None:
    top = start_server(tmp_path / "top", *TASK, "--rounds", "2", "--min-clients", "2", "--round-timeout", "60",
                       "--relay-ids", "r1,r2", "--local-epochs", "1", "--seed", "3", "--wait-for-clients", "60")
    saved = tmp_path / "saved"
    try:
        relays = [start_relay(top, f"r{r}", "--min-clients", "2", "--round-timeout", "50") for r in (1, 2)]
        for index in range(4):
            _leaf(relays[index // 2], top, index, 4, saved)
        assert top.wait(150) == 0, top.log()[-3000:]
        assert wait_all([r.process for r in relays], 30) == [0, 0]
    finally:
        top.stop()
    records = [json.loads(line) for line in (top.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["relays"] for r in records] == [{"r1": 2, "r2": 2}] * 2
    assert len(glob.glob(str(saved / "*.safetensors"))) == 8
    _assert_close(flat_fedavg(top.run_dir, saved, 3, 2), top.run_dir / "model.safetensors")
    relay_lines = [json.loads(line) for line in (relays[0].run_dir / "metrics.jsonl").read_text().splitlines()]
    uploaded = [r for r in relay_lines if r["uploaded"]]  # a first round may fail while leaves still start
    assert [(r["round"], r["aggregated_clients"], r["num_examples"]) for r in uploaded] == \
        [(n, 2, uploaded[0]["num_examples"]) for n in (1, 2)]


@pytest.mark.slow
def test_a_relay_killed_mid_upload_contributes_nothing_and_resumes_when_restarted(tmp_path: Path) -> None:
    top = start_server(tmp_path / "top", *TASK, "--rounds", "3", "--min-clients", "1", "--clients-per-round", "2",
                       "--round-timeout", "60", "--relay-ids", "r1,r2", "--local-epochs", "1", "--seed", "4",
                       "--wait-for-clients", "60")
    saved = tmp_path / "saved"
    try:
        r1 = start_relay(top, "r1", "--min-clients", "2", "--round-timeout", "50", "--upload-chunk-delay", "30")
        r2 = start_relay(top, "r2", "--min-clients", "2", "--round-timeout", "50")
        for index in range(4):
            _leaf(r1 if index < 2 else r2, top, index, 4, saved)
        _wait_log(r1, "round=1 uploading the mean", 90)
        time.sleep(0.5)  # the header is out; the first chunk waits --upload-chunk-delay
        r1.process.kill()
        r1.process.wait()
        _wait_log(ServerProcess(top.process, top.address, top.run_dir, top.log_path), "round=1 closed", 60)
        port = int(r1.address.rsplit(":", 1)[1])
        r1 = start_relay(top, "r1", "--min-clients", "2", "--round-timeout", "50", port=port)
        assert top.wait(150) == 0, top.log()[-3000:]
    finally:
        top.stop()
    records = [json.loads(line) for line in (top.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["relays"] == {"r2": 2}
    assert "r1" in records[0]["dropped"], records[0]["dropped"]
    assert records[-1]["relays"] == {"r1": 2, "r2": 2}, "the restarted relay and its reconnected clients serve again"
    under = {"leaf0": "r1", "leaf1": "r1", "leaf2": "r2", "leaf3": "r2"}
    expected = flat_fedavg(top.run_dir, saved, 4, 3,
                           lambda number, leaf: under[leaf] in records[number - 1]["relays"])
    _assert_close(expected, top.run_dir / "model.safetensors")
    assert "adopted upstream version" in r1.log() or "relaying version" in r1.log()


@pytest.mark.slow
def test_a_leaf_killed_under_a_relay_leaves_the_rest_of_its_tier_counted(tmp_path: Path) -> None:
    top = start_server(tmp_path / "top", *TASK, "--rounds", "2", "--min-clients", "1", "--round-timeout", "60",
                       "--relay-ids", "r1", "--local-epochs", "1", "--seed", "5", "--wait-for-clients", "60")
    saved = tmp_path / "saved"
    try:
        r1 = start_relay(top, "r1", "--min-clients", "2", "--round-timeout", "8")
        leaves = [_leaf(r1, top, i, 3, saved, *(["--slowdown", "500"] if i == 0 else [])) for i in range(3)]
        _wait_log(r1, "relaying version 0 to 3 clients", 90)
        time.sleep(1.0)
        leaves[0].kill()
        assert top.wait(150) == 0, top.log()[-3000:]
    finally:
        top.stop()
    records = [json.loads(line) for line in (top.run_dir / "metrics.jsonl").read_text().splitlines()]
    relay_lines = [json.loads(line) for line in (r1.run_dir / "metrics.jsonl").read_text().splitlines()]
    forwarded = [r for r in relay_lines if r["uploaded"]]
    assert [(r["aggregated_clients"], sorted(r["accepted"])) for r in forwarded] == [(2, ["leaf1", "leaf2"])] * 2
    assert "leaf0" in forwarded[0]["dropped"]
    assert [r["relays"] for r in records] == [{"r1": 2}] * 2
    assert not glob.glob(str(saved / "leaf0-*")), "the killed leaf never finished training"
    _assert_close(flat_fedavg(top.run_dir, saved, 5, 2), top.run_dir / "model.safetensors")
