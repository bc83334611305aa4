"""`fedstream simulate`: start (or attach to) a real coordinator and run many clients in Ray actors.

The actors themselves are client code (client/simulation.py); this module is the command: its flags, the server
it starts on 127.0.0.1, and the summary it prints.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from fedstream.cli.options import host_port, key_value, non_negative_int, positive_float, positive_int
from fedstream.client.simulation import ClientPlan, actor_groups, run_actors
from fedstream.server.modes import MODES



def simulate_parser(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--mode", choices=sorted(MODES), default="sync", help="server started here")
    p.add_argument("--buffer-size", type=positive_int, default=10, help="server started here, async mode")
    p.add_argument("--min-clients", type=positive_int, default=None,
                   help="server started here: updates that close a round (default: every sampled client)")
    p.add_argument("--round-timeout", type=positive_float, default=300.0,
                   help="server started here: a round closes after this many seconds without its stragglers")
    p.add_argument("--session-timeout", type=positive_float, default=120.0,
                   help="server started here: seconds without contact before a client is dropped (longer than a real "
                        "server's 30 s: hundreds of clients share an actor process, and a busy one heartbeats late)")
    p.add_argument("--seed", type=int, default=0, help="server started here: its --seed")
    p.add_argument("--run-dir", type=Path, default=None, help="server started here (default runs/sim-<timestamp>)")
    p.add_argument("--report", type=Path, default=None, help="write a JSON summary (actors, clients, seconds) here")
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="log level inside the actors")


def _start_server(args: argparse.Namespace, run_dir: Path) -> tuple[subprocess.Popen, str]:
    """A coordinator on 127.0.0.1 for the simulation (its long polls hold no thread, so no sizing is needed)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    port_file = run_dir / "server.port"
    port_file.unlink(missing_ok=True)
    needed = args.min_clients or args.clients_per_round or args.clients
    command = [sys.executable, "-m", "fedstream.cli", "server", "--insecure", "--address", "127.0.0.1:0",
               "--port-file", str(port_file), "--run-dir", str(run_dir), "--rounds", str(args.rounds),
               "--clients-per-round", str(args.clients_per_round), "--min-clients", str(needed),
               "--round-timeout", f"{args.round_timeout:g}", "--wait-for-clients", "900", "--seed", str(args.seed),
               "--session-timeout", f"{args.session_timeout:g}",
               "--mode", args.mode,
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
