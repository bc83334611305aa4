"""In-process federation for experiments: the real Coordinator and strategies, clients as function calls.

Clients train real torch models on their partitions. Every update goes through the coordinator's upload path
(begin_upload, chunks into the disk spool, CRC trailer, validation pass, fold), exactly as over gRPC; the only
shortcut is that a client reads the global model from the coordinator instead of downloading it (the raw
download codec would deliver the same tensors). No sockets and no processes, so hundreds of clients and
dozens of rounds run in seconds on a laptop.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import TensorDataset

from fedstream.client.privacy import privatize_delta
from fedstream.common.wire.manifest import encode_state
from fedstream.common.proto import coordinator_pb2 as pb
from fedstream.common.wire.protocol import PROTOCOL_VERSION
from fedstream.common.tasks import Task, TrainSettings
from fedstream.common.wire.framing import Crc32, iter_chunks
from fedstream.server.core.coordinator import Coordinator, ServerConfig
from fedstream.server.core.errors import Refusal
from fedstream.server.aggregation.strategies import Strategy

Attack = Callable[["OrderedDict[str, torch.Tensor]"], None]
MAX_ATTEMPTS = 3


def sign_flip(delta: "OrderedDict[str, torch.Tensor]") -> None:
    """A Byzantine client that sends the negation of its honest update."""
    for tensor in delta.values():
        if tensor.dtype.is_floating_point:
            tensor.neg_()


def scale(factor: float) -> Attack:
    """A Byzantine client that sends its honest update multiplied by `factor`."""

    def attack(delta: "OrderedDict[str, torch.Tensor]") -> None:
        for tensor in delta.values():
            if tensor.dtype.is_floating_point:
                tensor.mul_(factor)

    return attack


@dataclass
class SimClient:
    client_id: str
    index: int
    data: TensorDataset
    attack: Attack | None = None


@dataclass
class Simulation:
    task: Task
    strategy: Strategy
    clients: list[SimClient]
    run_dir: Path
    rounds: int
    clients_per_round: int = 0
    seed: int = 0
    local_epochs: int | None = None
    learning_rate: float | None = None
    batch_size: int | None = None
    records: list[dict] = field(default_factory=list)
    stopped: str = ""

    def config(self) -> ServerConfig:
        """A round closes when every sampled client delivered or was refused (e.g. its training diverged)."""
        return ServerConfig(rounds=self.rounds, clients_per_round=self.clients_per_round, min_clients=1,
                            round_timeout=3600.0, seed=self.seed, run_dir=self.run_dir, session_timeout=1e9,
                            wait_for_clients=60.0, local_epochs=self.local_epochs, batch_size=self.batch_size,
                            learning_rate=self.learning_rate, max_sessions=max(10_000, len(self.clients) + 1))

    def run(self) -> list[dict]:
        """Runs every round and returns the metrics records (also in run_dir/metrics.jsonl)."""
        logging.getLogger("fedstream.server").setLevel(logging.WARNING)
        coordinator = Coordinator(self.task, self.strategy, self.config())
        sessions = {c.client_id: coordinator.join(pb.JoinRequest(
            client_id=c.client_id, protocol_version=PROTOCOL_VERSION, device="cpu", codecs=["raw"],
            num_examples=len(c.data))).session_id for c in self.clients}
        loop = threading.Thread(target=coordinator.run, name="round-loop", daemon=True)
        loop.start()
        by_id = {c.client_id: c for c in self.clients}
        model = self.task.make_model()
        served: set[tuple[int, int]] = set()
        while loop.is_alive():
            with coordinator.cond:
                rnd = coordinator.round
                key = (rnd.number, rnd.attempt) if rnd is not None and not rnd.closed else None
            if key is None or key in served:
                time.sleep(0.001)
                continue
            if key[1] > MAX_ATTEMPTS:
                coordinator.stop(f"round {key[0]} could not be closed in {MAX_ATTEMPTS} attempts: every upload "
                                 "was refused (NaN from diverged training) or the aggregate was not finite")
                break
            served.add(key)
            refused = 0
            for client_id in rnd.selected:
                task = coordinator.next_task(sessions[client_id], 0.0)
                if task.kind == pb.Task.TRAIN:
                    try:
                        self.train_and_upload(coordinator, model, by_id[client_id], sessions[client_id], task)
                    except Refusal:
                        refused += 1
            if refused:
                with coordinator.cond:
                    rnd.deadline = time.monotonic()
                    coordinator.cond.notify_all()
        loop.join()
        self.stopped = coordinator.stopping
        self.records = coordinator.runlog.records()
        return self.records

    def train_and_upload(self, coordinator: Coordinator, model: torch.nn.Module, client: SimClient,
                         session_id: str, task: pb.Task) -> None:
        with coordinator.cond:
            global_state = OrderedDict((k, v.clone()) for k, v in coordinator.global_state.items())
        model.load_state_dict(global_state)
        c, d = task.config, self.task.defaults
        settings = TrainSettings(local_epochs=int(c.local_epochs), batch_size=int(c.batch_size or d.batch_size),
                                 learning_rate=float(c.learning_rate or d.learning_rate),
                                 proximal_mu=float(c.proximal_mu), max_steps=d.max_steps)
        seed = int(c.options.get("seed", "0")) * 7919 + client.index
        torch.manual_seed(seed)
        metrics = self.task.train(model, client.data, settings, torch.device("cpu"),
                                  torch.Generator().manual_seed(seed),
                                  global_params=global_state if settings.proximal_mu > 0 else None)
        local = model.state_dict()
        delta = OrderedDict((k, local[k].detach() - g) for k, g in global_state.items())
        if c.clip_norm > 0:
            privatize_delta(delta, c.clip_norm, c.noise_multiplier)
        if client.attack is not None:
            client.attack(delta)
        manifest, buffers = encode_state(delta, "raw")
        header = pb.UpdateHeader(session_id=session_id, round=task.round, base_version=task.version,
                                 num_examples=len(client.data), metrics=metrics, manifest=manifest,
                                 upload_id=uuid.uuid4().hex)
        sink = coordinator.begin_upload(header)
        crc = Crc32()
        for piece in iter_chunks(buffers, coordinator.config.chunk_bytes):
            crc.update(piece)
            sink.write(piece)
        coordinator.finish_upload(sink, pb.Trailer(crc32=crc.value, total_bytes=crc.nbytes))


def split(data: TensorDataset, parts: list[torch.Tensor]) -> list[TensorDataset]:
    return [TensorDataset(*(t[idx] for t in data.tensors)) for idx in parts]
