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

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
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


# ----- the `fedstream simulate` subcommand --------------------------------------------------------------------------

def simulate_parser(p: argparse.ArgumentParser) -> None:
    from fedstream.cli.options import host_port, key_value, non_negative_int, positive_float, positive_int

    p.add_argument("--clients", type=positive_int, default=100, help="number of simulated clients")
    p.add_argument("--clients-per-actor", type=positive_int, default=25, help="client ids served by one Ray actor")
    p.add_argument("--cpus-per-client", type=positive_float, default=0.01, help="Ray CPU fraction per client")
    p.add_argument("--gpus-per-client", type=float, default=0.0, help="Ray GPU fraction per client (trains on cuda)")
    p.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: start a local one)")
    p.add_argument("--num-cpus", type=positive_int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--server", type=host_port, default=None,
                   help="attach to this running server (default: start one on 127.0.0.1 with the flags below)")
    p.add_argument("--task", default="digits", help="digits, synthetic, or package.module:make_task")
    p.add_argument("--task-option", action="append", type=key_value, default=[], metavar="KEY=VALUE",
                   help="task option, repeatable (see docs/tasks.md)")
    p.add_argument("--partition-scheme", choices=["iid", "dirichlet"], default="iid",
                   help="iid: shuffled equal shares; dirichlet: label skew set by --alpha")
    p.add_argument("--alpha", type=positive_float, default=0.5, help="Dirichlet concentration (label skew)")
    p.add_argument("--local-epochs", type=non_negative_int, default=None,
                   help="override the local epochs the server asks for")
    p.add_argument("--tls-dir", type=Path, default=None, help="connect with TLS (per-client certificates sim-I.pem)")
    p.add_argument("--server-name", default=None,
                   help="name in the server certificate, when it differs from the host in --server")
    p.add_argument("--insecure", action="store_true", help="connect in plaintext (implied for a server started here)")
    p.add_argument("--rounds", type=positive_int, default=3, help="server started here: rounds (versions in async)")
    p.add_argument("--clients-per-round", type=non_negative_int, default=0, help="server started here: 0 means all")
    p.add_argument("--mode", choices=["sync", "async"], default="sync", help="server started here")
    p.add_argument("--buffer-size", type=positive_int, default=10, help="server started here, async mode")
    p.add_argument("--min-clients", type=positive_int, default=None,
                   help="server started here: updates that close a round (default: every sampled client)")
    p.add_argument("--round-timeout", type=positive_float, default=300.0,
                   help="server started here: a round closes after this many seconds without its stragglers")
    p.add_argument("--seed", type=int, default=0, help="server started here: its --seed")
    p.add_argument("--run-dir", type=Path, default=None, help="server started here (default runs/sim-<timestamp>)")
    p.add_argument("--report", type=Path, default=None, help="write a JSON summary (actors, clients, seconds) here")
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="log level inside the actors")


def _start_server(args: argparse.Namespace, run_dir: Path) -> tuple[subprocess.Popen, str]:
    """A coordinator on 127.0.0.1 sized for the simulation: a worker thread per long-polling client."""
    run_dir.mkdir(parents=True, exist_ok=True)
    port_file = run_dir / "server.port"
    port_file.unlink(missing_ok=True)
    needed = args.min_clients or args.clients_per_round or args.clients
    command = [sys.executable, "-m", "fedstream.cli", "server", "--insecure", "--address", "127.0.0.1:0",
               "--port-file", str(port_file), "--run-dir", str(run_dir), "--rounds", str(args.rounds),
               "--clients-per-round", str(args.clients_per_round), "--min-clients", str(needed),
               "--round-timeout", f"{args.round_timeout:g}", "--wait-for-clients", "900", "--seed", str(args.seed),
               "--max-workers", str(max(256, 2 * args.clients + 32)), "--mode", args.mode,
               "--join-rate", "0",  # every simulated client joins from this one host
               "--buffer-size", str(args.buffer_size), "--task", args.task, "--log-level", "WARNING"]
    command += [f for k, v in args.task_option for f in ("--task-option", f"{k}={v}")]
    server = subprocess.Popen(command)
    deadline = time.monotonic() + 120
    while not (port_file.exists() and port_file.read_text().strip()):
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError("the simulation's server did not start; see the messages above")
        time.sleep(0.1)
    return server, f"127.0.0.1:{port_file.read_text().strip()}"


def run_simulate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        import ray
    except ImportError:
        parser.error("simulation runs clients in Ray actors: pip install 'fedstream[sim]' (ray>=2.30)")
    if args.server and bool(args.tls_dir) == bool(args.insecure):
        parser.error("with --server, choose --tls-dir DIR or --insecure")
    if args.min_clients and args.min_clients > (args.clients_per_round or args.clients):
        parser.error(f"--min-clients {args.min_clients} exceeds the clients sampled per round "
                     f"({args.clients_per_round or args.clients})")
    if args.gpus_per_client < 0:
        parser.error(f"--gpus-per-client must be >= 0, got {args.gpus_per_client}")
    try:
        actor_groups(args.clients, args.clients_per_actor)
    except ValueError as exc:
        parser.error(str(exc))
    server, address = None, args.server
    run_dir = args.run_dir or Path("runs") / time.strftime("sim-%Y%m%d-%H%M%S")
    if address is None:
        server, address = _start_server(args, run_dir)
    plan = ClientPlan(server=address, total=args.clients, task=args.task, task_options=dict(args.task_option),
                      partition_scheme=args.partition_scheme, alpha=args.alpha,
                      device="cuda" if args.gpus_per_client > 0 else "cpu", local_epochs=args.local_epochs,
                      tls_dir=str(args.tls_dir) if args.tls_dir else None, server_name=args.server_name,
                      log_level=args.log_level)
    started = time.monotonic()
    try:
        if args.ray_address:
            ray.init(address=args.ray_address, logging_level="WARNING")
        else:
            ray.init(num_cpus=args.num_cpus, include_dashboard=False, logging_level="WARNING")
        try:
            actors = run_actors(plan, args.clients_per_actor, args.cpus_per_client, args.gpus_per_client)
        except ValueError as exc:
            parser.error(str(exc))
        finally:
            ray.shutdown()
        code = server.wait(timeout=120) if server is not None else 0
    finally:
        if server is not None and server.poll() is None:
            server.kill()
    seconds = time.monotonic() - started
    clients = {cid: result for actor in actors for cid, result in actor["clients"].items()}
    failed = sorted(cid for cid, result in clients.items() if result["exit"] != 0)
    summary = {"clients": len(clients),
               "actors": [{"pid": a["pid"], "rss_mb": a["rss_mb"], "clients": sorted(a["clients"])} for a in actors],
               "processes": len({a["pid"] for a in actors}), "failed": failed, "seconds": round(seconds, 2),
               "plan": asdict(plan), "results": clients, "run_dir": str(run_dir) if server is not None else None}
    if args.report is not None:
        args.report.write_text(json.dumps(summary, indent=1))
    print(f"{len(clients)} simulated clients in {summary['processes']} actor process(es) finished in {seconds:.1f} s"
          + (f"; {len(failed)} failed: {', '.join(failed[:10])}" if failed else ""))
    if server is not None:
        print(f"metrics: {run_dir / 'metrics.jsonl'}")
    return 1 if failed or code else 0
