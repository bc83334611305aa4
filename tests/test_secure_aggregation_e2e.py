"""Secure aggregation end to end: a real server process and real client processes on 127.0.0.1.

The clients keep a copy of each delta they upload (--save-updates), so the test can compute plain FedAvg of the
very same updates and compare it with the model the server published from masked uploads alone. The dropout
test kills clients at known protocol points with the test-only FEDSTREAM_TEST_SECAGG_EXIT variable
(client/secure_aggregation.py): the process exits without leaving, as a crashed device would.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from fedstream.client.secure_aggregation import TEST_EXIT_CODE, TEST_EXIT_VARIABLE
from fedstream.common.secagg import wire
from fedstream.common.tasks import load_task
from tests.harness import FEDSTREAM, ServerProcess, env, on_test_device, start_server, wait_all

CLIP = 2.0
BITS = 24


def start_client(server: ServerProcess, index: int, total: int, updates: Path, exit_after: str = "") -> subprocess.Popen:
    log_path = server.run_dir.parent / f"{server.run_dir.name}.client{index}.log"
    variables = {**env(), **({TEST_EXIT_VARIABLE: exit_after} if exit_after else {})}
    with open(log_path, "a") as log:
        process = subprocess.Popen(FEDSTREAM + ["client", "--server", server.address, "--connect-timeout", "60",
                                                "--insecure", "--partition", f"{index}/{total}", "--client-id",
                                                f"client-{index}", "--save-updates", str(updates),
                                                *on_test_device(())],
                                   stdout=log, stderr=subprocess.STDOUT, env=variables)
    server.clients.append(process)
    return process


def offline_fedavg(records: list[dict], updates: Path, seed: int) -> dict[str, torch.Tensor]:
    """x_r = x_{r-1} + Σ n·clip(Δ, ±C) / Σ n over each round's survivors, from the clients' own copies."""
    torch.manual_seed(seed)
    state = {k: v.double().clone() for k, v in load_task("digits").make_model().state_dict().items()}
    for record in records:
        total, step = 0, {k: torch.zeros_like(v) for k, v in state.items()}
        for client in record["accepted"]:
            path = updates / f"{client}-round{record['round']}.safetensors"
            with safe_open(str(path), "pt") as handle:
                n = int(handle.metadata()["num_examples"])
            delta = load_file(str(path))
            assert max(t.abs().max().item() for t in delta.values()) <= CLIP, "the test's C must not clip"
            total += n
            for k in step:
                step[k] += n * delta[k].double()
        state = {k: state[k] + step[k] / total for k in state}
    return state


def bound(records: list[dict], updates: Path) -> float:
    """The documented bound, summed over rounds: S·step / Σ n per round, step = C·W / (2^(B-1) − 1)."""
    total = 0.0
    for record in records:
        examples = []
        for client in record["accepted"]:
            with safe_open(str(updates / f"{client}-round{record['round']}.safetensors"), "pt") as handle:
                examples.append(int(handle.metadata()["num_examples"]))
        step = CLIP * max(examples) / (2 ** (BITS - 1) - 1)
        assert record["secagg_step"] >= step  # W is the largest sampled weight, at least the survivors'
        total += len(examples) * record["secagg_step"] / sum(examples)
    return total


def check_model(run_dir: Path, updates: Path, seed: int) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = load_file(str(run_dir / "model.safetensors"))
    expected = offline_fedavg(records, updates, seed)
    tolerance = bound(records, updates) + 1e-6  # + float32 rounding of the published model
    for name, tensor in expected.items():
        error = (final[name].double() - tensor).abs().max().item()
        assert error <= tolerance, (name, error, tolerance)
    return records


@pytest.mark.slow
def test_secure_aggregation_run_equals_plain_fedavg_of_the_same_updates(tmp_path: Path) -> None:
    run_dir, updates = tmp_path / "run", tmp_path / "updates"
    server = start_server(run_dir, "--secure-aggregation", "--secagg-clip", str(CLIP), "--secagg-bits", str(BITS),
                          "--rounds", "2", "--min-clients", "3", "--seed", "5", "--round-timeout", "60")
    try:
        procs = [start_client(server, i, 3, updates) for i in range(3)]
        assert server.wait(timeout=150) == 0, server.log()[-3000:]
        assert wait_all(procs, timeout=60) == [0] * 3, [server.client_log(i)[-2000:] for i in range(3)]
    finally:
        server.stop()
    records = check_model(run_dir, updates, seed=5)
    assert [r["clients"] for r in records] == [3, 3] and records[-1]["eval_accuracy"] > 0.8
    assert all(r["mode"] == "secure-aggregation" and r["secagg_ring_bits"] == 32 for r in records)


@pytest.mark.slow
def test_round_completes_without_a_client_lost_after_key_sharing_and_keeps_one_lost_after_its_upload(
        tmp_path: Path) -> None:
    run_dir, updates = tmp_path / "run", tmp_path / "updates"
    # 6 clients: complete graph, K = 5, T = 3; after both losses 4 clients answer the unmasking, each survivor
    # keeps >= 3 live neighbours
    server = start_server(run_dir, "--secure-aggregation", "--secagg-clip", str(CLIP), "--secagg-bits", str(BITS),
                          "--rounds", "1", "--min-clients", "4", "--clients-per-round", "6", "--seed", "3",
                          "--round-timeout", "60", "--session-timeout", "4", "--heartbeat-seconds", "1")
    try:
        exits = {1: wire.SHARE_KEYS, 4: wire.MASKED_INPUT}
        procs = [start_client(server, i, 6, updates, exits.get(i, "")) for i in range(6)]
        assert server.wait(timeout=180) == 0, server.log()[-3000:]
        codes = wait_all(procs, timeout=60)
    finally:
        server.stop()
    assert codes == [0, TEST_EXIT_CODE, 0, 0, TEST_EXIT_CODE, 0], codes
    (record,) = check_model(run_dir, updates, seed=3)
    assert record["accepted"] == ["client-0", "client-2", "client-3", "client-4", "client-5"]
    assert set(record["dropped"]) == {"client-1", "client-4"}
    assert record["dropped"]["client-1"].startswith(wire.MASKED_INPUT)
    assert record["dropped"]["client-4"].startswith(wire.UNMASKING)
    assert not (updates / "client-1-round1.safetensors").exists()  # it never trained: the sum is the survivors'
    assert record["attempt"] == 1
