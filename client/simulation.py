"""Many simulated clients without one OS process per client: Ray actors, each serving several client ids.

`fedstream simulate --clients 200 --clients-per-actor 50 --cpus-per-client 0.01` starts (or attaches to, with
--server) a real coordinator and runs the clients in Ray actors. An actor loads the task once and runs one
FederatedClient per client id in its own thread, each with its own session over real gRPC (Join, GetTask,
DownloadModel, UploadUpdate), so the server cannot tell them from separate processes. Ray places actors by what
each client asks for: an actor serving k clients reserves k × --cpus-per-client CPUs and k × --gpus-per-client
GPUs, on a local Ray (--num-cpus) by default or on an existing cluster (--ray-address). Ray is an optional extra:
`pip install 'fedstream[sim]'`.
"""

from __future__ import annotations

import os
import resource
import threading
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ClientPlan:
    """What every simulated client shares: the server, the task, how data is split, where it trains."""

    server: str
    total: int
    task: str = "digits"
    task_options: dict[str, str] = field(default_factory=dict)
    partition_scheme: str = "iid"
    alpha: float = 0.5
    partition_seed: int = 0
    device: str = "cpu"
    local_epochs: int | None = None
    tls_dir: str | None = None
    server_name: str | None = None
    log_level: str = "WARNING"
    id_prefix: str = "sim-"


def actor_groups(clients: int, per_actor: int) -> list[list[int]]:
    """Client indices split into consecutive groups of at most per_actor."""
    if clients < 1 or per_actor < 1:
        raise ValueError(f"need at least one client and one client per actor, got {clients} and {per_actor}")
    return [list(range(start, min(start + per_actor, clients))) for start in range(0, clients, per_actor)]


class ClientHost:
    """One Ray actor: several federated clients, each in its own thread with its own gRPC session."""

    def __init__(self, plan: ClientPlan, indices: list[int]) -> None:
        import torch

        from fedstream.client.runner import ClientConfig, FederatedClient
        from fedstream.common.logs import setup_logging
        from fedstream.common.tasks import load_task

        torch.set_num_threads(1)
        setup_logging(plan.log_level)
        task = load_task(plan.task, plan.task_options)
        self.clients = []
        for i in indices:
            client_id = f"{plan.id_prefix}{i}"
            credentials = None
            if plan.tls_dir:
                from fedstream.common.security.tls import client_credentials

                credentials = client_credentials(Path(plan.tls_dir), client_id)
            config = ClientConfig(server=plan.server, client_id=client_id, partition=(i, plan.total),
                                  partition_scheme=plan.partition_scheme, alpha=plan.alpha,
                                  partition_seed=plan.partition_seed, device=plan.device,
                                  local_epochs=plan.local_epochs, connect_timeout=120.0, credentials=credentials,
                                  server_name=plan.server_name)
            self.clients.append(FederatedClient(task, config))

    def run(self) -> dict:
        """Runs every client to FINISH; returns this actor's pid, peak RSS, and each client's exit code and rounds."""
        results: dict[str, tuple[int, int]] = {}

        def work(client) -> None:
            try:
                code = client.run()
            except Exception as exc:  # one client's failure must not hide the others' results
                import logging

                logging.getLogger("fedstream.client").error("client=%s failed: %s", client.config.client_id, exc)
                code = 1
            results[client.config.client_id] = (code, client.rounds_trained)

        threads = [threading.Thread(target=work, args=(c,), name=c.config.client_id, daemon=True) for c in self.clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        clients = {cid: {"exit": code, "rounds_trained": rounds} for cid, (code, rounds) in sorted(results.items())}
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        return {"pid": os.getpid(), "rss_mb": round(peak_kib / 1024, 1), "clients": clients}


def run_actors(plan: ClientPlan, per_actor: int, cpus_per_client: float, gpus_per_client: float) -> list[dict]:
    """Starts the actors on the connected Ray cluster and waits until all their clients have finished."""
    import ray

    groups = actor_groups(plan.total, per_actor)
    needed_cpus = plan.total * cpus_per_client
    available = ray.cluster_resources().get("CPU", 0.0)
    if needed_cpus > available + 1e-9:
        raise ValueError(f"{plan.total} clients × {cpus_per_client} CPU = {needed_cpus:g} CPUs, but the Ray cluster "
                         f"has {available:g}: lower --cpus-per-client or add CPUs (--num-cpus, --ray-address)")
    needed_gpus = plan.total * gpus_per_client
    if needed_gpus > ray.cluster_resources().get("GPU", 0.0) + 1e-9:
        raise ValueError(f"{plan.total} clients × {gpus_per_client} GPU = {needed_gpus:g} GPUs, but the Ray cluster "
                         f"has {ray.cluster_resources().get('GPU', 0.0):g}")
    largest = max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=0.0)
    biggest_actor = max(len(g) for g in groups) * cpus_per_client
    if biggest_actor > largest + 1e-9:
        raise ValueError(f"an actor serving {max(len(g) for g in groups)} clients needs {biggest_actor:g} CPUs; the "
                         f"largest Ray node has {largest:g}: lower --clients-per-actor or --cpus-per-client")
    host = ray.remote(ClientHost)
    actors = [host.options(num_cpus=len(g) * cpus_per_client, num_gpus=len(g) * gpus_per_client).remote(plan, g)
              for g in groups]
    return ray.get([a.run.remote() for a in actors])
