"""Clients that are clusters: one federated client trained with DistributedDataParallel across torchrun ranks.

`torchrun --nproc-per-node N -m fedstream.client ...` starts N ranks of one client. Rank 0 alone talks to the
coordinator (join, tasks, download, upload), exactly as a single-process client does; before each local
training it broadcasts the task's settings and the global model to the other ranks. Every rank trains on its
own shard of the client's partition (DDP averages gradients each step, so all ranks end with the same model),
and rank 0 uploads local − global with the whole partition's example count. Each rank uses the task's batch
size, so one step of the cluster sees N batches. Backend: gloo on CPU, nccl on GPU (rank r on cuda:LOCAL_RANK).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Mapping

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import TensorDataset

from fedstream.client.device import resolve_device
from fedstream.client.runner import ClientConfig, FederatedClient
from fedstream.common.tasks import Task, TrainSettings

log = logging.getLogger("fedstream.client")
# Ranks other than 0 wait in a collective while rank 0 waits for the coordinator (a sync round can take long).
IDLE_TIMEOUT = timedelta(hours=12)


@dataclass(frozen=True)
class Topology:
    rank: int
    world_size: int
    local_rank: int

    @classmethod
    def from_env(cls) -> "Topology":
        """RANK, WORLD_SIZE and LOCAL_RANK as torchrun sets them."""
        try:
            return cls(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")))
        except (KeyError, ValueError) as exc:
            raise ValueError(f"a cluster client needs RANK and WORLD_SIZE from torchrun: {exc}") from None


def launched_by_torchrun() -> bool:
    """True in one of several ranks (torchrun, srun, mpirun set WORLD_SIZE), or in torchrun's only rank, so
    that one GPU still runs the nccl path."""
    env = os.environ
    return int(env.get("WORLD_SIZE", "1")) > 1 or ("TORCHELASTIC_RUN_ID" in env and "RANK" in env)


@dataclass(frozen=True)
class Command:
    """What rank 0 tells the other ranks: train one task (settings, seed, FedProx anchors?) or stop."""

    kind: str
    settings: TrainSettings | None = None
    seed: int = 0
    proximal: bool = False


def rank_device(spec: str, local_rank: int) -> torch.device:
    """--device for one rank: auto and cuda mean this rank's own GPU (cuda:LOCAL_RANK)."""
    device = resolve_device(spec)
    if device.type == "cuda" and (spec in ("auto", "cuda") or device.index is None):
        device = torch.device("cuda", local_rank)
    return device


def shard_of(data: TensorDataset, rank: int, world_size: int) -> TensorDataset:
    """Every world_size-th example from rank: disjoint shards that differ in size by at most one."""
    indices = torch.arange(rank, len(data), world_size)
    return TensorDataset(*(t[indices] for t in data.tensors))


class ShardTrainer:
    """One rank's part of local training: its shard, and the model wrapped in DDP (wrapped once, reused)."""

    def __init__(self, task: Task, model: torch.nn.Module, shard: TensorDataset, device: torch.device,
                 topology: Topology) -> None:
        self.task = task
        self.model = model
        self.shard = shard
        self.device = device
        self.topology = topology
        self.ddp: DistributedDataParallel | None = None

    def broadcast_model(self) -> None:
        """Rank 0's model (the global version just loaded) into every rank's model, in place."""
        with torch.no_grad():
            for tensor in self.task.federated_state(self.model).values():
                dist.broadcast(tensor, src=0)

    def train(self, command: Command) -> dict[str, float]:
        """Trains this rank's shard in lockstep with the others; returns metrics summed over all ranks."""
        self.broadcast_model()
        if self.ddp is None:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=device_ids)
        anchors = None
        if command.proximal:
            anchors = {f"module.{k}": v.detach().clone() for k, v in self.task.federated_state(self.model).items()}
        rank = self.topology.rank
        torch.manual_seed(command.seed * 1_000_003 + rank)
        generator = torch.Generator().manual_seed(command.seed * 1_000_003 + rank)
        with self.ddp.join():
            metrics = self.task.train(self.ddp, self.shard, command.settings, self.device, generator,
                                      global_params=anchors) if len(self.shard) else {}
        seen = float(len(self.shard))
        totals = torch.tensor([metrics.get("train_loss", 0.0) * seen, seen, metrics.get("steps", 0.0)],
                              dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(totals)
        log.info("rank %d/%d trained on %d of the client's examples (%d steps)", rank, self.topology.world_size,
                 int(seen), int(metrics.get("steps", 0)))
        loss_sum, examples, steps = totals.tolist()
        return {"train_loss": loss_sum / examples if examples else 0.0, "steps": steps,
                "ranks": float(self.topology.world_size)}


def send(command: Command) -> Command:
    """Rank 0 sends, the other ranks receive (the same call on every rank)."""
    box = [command]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class ClusterClient(FederatedClient):
    """Rank 0: a FederatedClient whose local training is the whole cluster's DDP training."""

    def __init__(self, task: Task, config: ClientConfig, topology: Topology) -> None:
        super().__init__(task, config)
        self.trainer = ShardTrainer(task, self.model, shard_of(self.data, topology.rank, topology.world_size),
                                    self.device, topology)

    def local_train(self, settings: TrainSettings, generator: torch.Generator,
                    global_params: Mapping[str, torch.Tensor] | None) -> dict[str, float]:
        command = send(Command("train", settings, generator.initial_seed(), global_params is not None))
        return self.trainer.train(command)

    def run(self) -> int:
        try:
            return super().run()
        finally:
            send(Command("stop"))


def serve_rank(task: Task, config: ClientConfig, device: torch.device, topology: Topology) -> int:
    """Ranks 1..N-1: wait for rank 0's commands, train the shard, until told to stop."""
    i, n = config.partition
    data = task.client_split(i, n, config.partition_scheme, config.alpha, config.partition_seed).train
    trainer = ShardTrainer(task, task.make_model().to(device), shard_of(data, topology.rank, topology.world_size),
                           device, topology)
    while True:
        command = send(Command("idle"))
        if command.kind == "stop":
            return 0
        trainer.train(command)


def run_cluster_client(task: Task, config: ClientConfig) -> int:
    """Entry point of every rank of a torchrun-launched client."""
    topology = Topology.from_env()
    device = rank_device(config.device, topology.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=IDLE_TIMEOUT)
    log.info("client=%s rank %d/%d on %s (%s)", config.client_id, topology.rank, topology.world_size, device, backend)
    try:
        if topology.rank == 0:
            return ClusterClient(task, replace(config, device=str(device)), topology).run()
        return serve_rank(task, config, device, topology)
    finally:
        try:
            dist.barrier()
        except RuntimeError as exc:
            log.warning("client=%s rank %d: peers gone before teardown (%s)", config.client_id, topology.rank, exc)
        dist.destroy_process_group()
