"""The `fedstream` subcommands: server, client, demo."""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime
from pathlib import Path

from fedstream.cli.options import (host_port, id_list, key_value, naming_flag, non_negative_float, non_negative_int, positive_float,
                                   positive_int)
from fedstream.cli.dashboard_flags import add_dashboard_flags
from fedstream.cli.security import add_client_security_flags, add_server_security_flags, client_security, server_security
from fedstream.common.allocator import tune_malloc
from fedstream.common.codecs.registry import available_codecs
from fedstream.server.modes import MODES as MODE_NAMES
from fedstream.common.training.precision import AMP_CHOICES
from fedstream.common.wording import plural
from fedstream.common.wire.framing import DEFAULT_CHUNK_BYTES, check_chunk_bytes
from fedstream.server.aggregation.staleness import STALENESS


STRATEGY_HELP = ("fedavg, fedavgm, fedprox, fedadagrad, fedadam, fedyogi, median, trimmed-mean, krum, multi-krum, "
                 "or package.module:Class")


def default_run_dir() -> Path:
    return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


def add_task_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default="digits", help="digits, synthetic, or package.module:make_task")
    p.add_argument("--task-option", action="append", type=key_value, default=[], metavar="KEY=VALUE",
                   help="task option, repeatable (digits: hidden, epochs, batch_size, lr; synthetic: params, "
                        "steps, ...; see docs/tasks.md); unknown keys are refused")


def server_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML file with the same keys as these flags")
    p.add_argument("--address", type=host_port, default="0.0.0.0:8080",
                   help="HOST:PORT to listen on (0.0.0.0: every interface; port 0: a free port, see --port-file)")
    add_task_flags(p)
    p.add_argument("--rounds", type=positive_int, default=10,
                   help="rounds to run (versions to publish in --mode async)")
    p.add_argument("--clients-per-round", type=non_negative_int, default=0, help="K clients sampled per round (0: all)")
    p.add_argument("--min-clients", type=positive_int, default=1, help="updates needed to close a round")
    p.add_argument("--round-timeout", type=positive_float, default=120.0, help="seconds before a round closes")
    p.add_argument("--strategy", default="fedavg", help=STRATEGY_HELP)
    p.add_argument("--strategy-option", action="append", type=key_value, default=[], metavar="KEY=VALUE",
                   help="strategy setting, repeatable (fedprox: mu=0.01; fedavgm: momentum, server_lr; trimmed-mean: "
                        "beta=0.2; krum: f; multi-krum: f, m); see docs/strategies.md")
    p.add_argument("--dp", choices=["central", "local"], default=None, help="client-level differential privacy")
    p.add_argument("--clip", default=None, help="DP: L2 norm C each client delta is clipped to, or 'adaptive' "
                   "(central only; default 1.0)")
    p.add_argument("--noise-multiplier", type=float, default=1.0, help="DP: σ; Gaussian noise of std σ·C")
    p.add_argument("--delta", type=positive_float, default=1e-5, help="DP: the δ that ε is reported at")
    p.add_argument("--target-epsilon", type=positive_float, default=None,
                   help="DP: end the run before a round that would take ε past this")
    p.add_argument("--dp-option", action="append", type=key_value, default=[], metavar="KEY=VALUE",
                   help="central DP: initial_clip, target_quantile, clip_lr, count_stddev (adaptive clipping), "
                        "sample_rate, noise_seed")
    p.add_argument("--run-dir", type=Path, default=None, help="default runs/<timestamp>")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the initial model, client sampling and the clients' shuffling")
    p.add_argument("--local-epochs", type=positive_int, default=None, help="override the task's local epochs")
    p.add_argument("--batch-size", type=positive_int, default=None, help="override the task's local batch size")
    p.add_argument("--learning-rate", type=positive_float, default=None, help="override the task's local learning rate")
    p.add_argument("--client-setting", action="append", default=[], metavar="CLIENT_ID:KEY=VALUE[,KEY=VALUE]",
                   help="per-client training settings, repeatable: local_epochs, batch_size, learning_rate, or "
                        "any task option (e.g. client-7:local_epochs=1,batch_size=16)")
    p.add_argument("--eval-every", type=positive_int, default=1,
                   help="evaluate the global model on the server's test data every N rounds (and after the last)")
    p.add_argument("--reproducible", action="store_true",
                   help="fold each round's updates in client-id order, not arrival order, so runs with the same "
                        "seeds give bit-identical models (folds that wait move to the end of the round; with --dp central, "
                        "also set --dp-option noise_seed; local DP and DP-SGD noise is the clients' own secret)")
    p.add_argument("--federated-eval", action="store_true",
                   help="after each round, clients also score the new model on their own test split")
    p.add_argument("--mode", choices=sorted(set(MODE_NAMES) - {"relay"}), default="sync",  # relay: `fedstream relay`
                   help="sync: rounds wait for their clients; async: FedBuff, a version every --buffer-size updates; "
                        "over-selection: a round closes at the first --min-clients updates")
    p.add_argument("--buffer-size", type=positive_int, default=10, help="async: updates folded into each version (K)")
    p.add_argument("--staleness", choices=sorted(STALENESS), default="sqrt",
                   help="async: discount of an update s versions old: constant 1, sqrt 1/sqrt(1+s), poly (1+s)^-a")
    p.add_argument("--staleness-exponent", type=positive_float, default=0.5, help="async: a for --staleness poly")
    p.add_argument("--max-staleness", type=non_negative_int, default=10,
                   help="async: updates more versions old than this are refused")
    p.add_argument("--relay-ids", type=id_list, default=frozenset(), metavar="ID,ID,...|*",
                   help="client ids allowed to join as relays (`fedstream relay --client-id`), whose updates are "
                        "partial sums of their own clients; * for any (docs/relays.md)")
    p.add_argument("--secure-aggregation", action="store_true",
                   help="SecAgg+: the server learns only the sum of each round's updates (docs/secure-aggregation.md); "
                        "same as --mode secure-aggregation")
    p.add_argument("--secagg-clip", type=positive_float, default=None,
                   help="secure aggregation: each coordinate of an update is clipped to ±C before masking (required)")
    p.add_argument("--secagg-bits", type=positive_int, default=16,
                   help="secure aggregation: bits of one client's weighted coordinate (fixed point)")
    p.add_argument("--secagg-neighbours", type=positive_int, default=None,
                   help="secure aggregation: neighbours K of each client (default: the smallest K whose round fails "
                        "with probability <= 1e-6 at 10%% dropouts)")
    p.add_argument("--secagg-threshold", type=positive_int, default=None,
                   help="secure aggregation: Shamir threshold T (default K/2 + 1)")
    p.add_argument("--upload-codec", choices=available_codecs(), default="raw",
                   help="how clients encode their deltas (see docs/compression.md)")
    p.add_argument("--download-codec", choices=available_codecs(), default="raw",
                   help="how the server encodes the global model for download")
    p.add_argument("--topk-fraction", type=positive_float, default=0.01,
                   help="share of each tensor the topk codec keeps (0.01: the 1%% largest magnitudes)")
    p.add_argument("--error-feedback", choices=["on", "off"], default="on",
                   help="clients add what a lossy upload codec dropped to their next update")
    p.add_argument("--incremental-download", action="store_true",
                   help="clients holding the previous version download only the difference, in --download-codec")
    p.add_argument("--prune-schedule", default="", metavar="S,S,... | ROUND:S,...",
                   help="magnitude-prune the global model: 0.5,0.8,0.9 spreads the steps over the run; "
                        "2:0.5,4:0.8 prunes to 50%% after round 2, to 80%% after round 4")
    p.add_argument("--chunk-bytes", type=positive_int, default=DEFAULT_CHUNK_BYTES,
                   help="bytes of tensor data per streamed message")
    p.add_argument("--max-update-bytes", type=non_negative_int, default=0, help="cap on one upload (0: 2 × model)")
    p.add_argument("--wait-for-clients", type=positive_float, default=600.0,
                   help="seconds to wait for enough clients to connect before giving up")
    p.add_argument("--sample-grace", type=non_negative_float, default=5.0,
                   help="after the first round: seconds to wait for the rest of --clients-per-round once "
                        "--min-clients are connected, before sampling from those there")
    g = p.add_argument_group("bounds on one client's pull (docs/security.md)")
    g.add_argument("--max-examples", type=positive_int, default=1_000_000_000,
                   help="the most examples a client may claim at join; larger claims are clipped")
    g.add_argument("--weight-cap-factor", type=positive_float, default=10.0,
                   help="an update counts for at most this many times the median claim of the connected clients")
    g.add_argument("--max-update-norm", type=non_negative_float, default=0.0,
                   help="scale updates down to this L2 norm (0: automatic, --norm-bound-factor × the last round's "
                        "median norm)")
    g.add_argument("--norm-bound-factor", type=positive_float, default=10.0,
                   help="automatic norm bound: this many times the median update norm of the last round (before "
                        "any round: × the global model's norm)")
    p.add_argument("--max-workers", type=positive_int, default=None,
                   help="threads for byte work: spooling, checks, folds, encoding (default: 2 per CPU, at least 4); "
                        "calls themselves run on one event loop and hold no thread")
    p.add_argument("--port-file", type=Path, default=None, help="write the bound port here (for --address HOST:0)")
    p.add_argument("--health-address", type=host_port, default=None, metavar="HOST:PORT",
                   help="also answer grpc.health.v1 Check here, in plaintext and nothing else, for probes that cannot "
                        "present a client certificate (Kubernetes' grpc probe); off by default")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log threshold")
    add_server_security_flags(p)
    add_dashboard_flags(p)


def client_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML file with the same keys as these flags")
    p.add_argument("--server", type=host_port, default="127.0.0.1:8080",
                   help="HOST:PORT of the coordinator; HOST must be a name in its certificate, else see --server-name")
    add_task_flags(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--partition", default="0/1", help="I/N: this client's share of the training data (I from 0)")
    p.add_argument("--partition-scheme", choices=["iid", "dirichlet"], default="iid",
                   help="iid: shuffled equal shares; dirichlet: label skew set by --alpha")
    p.add_argument("--alpha", type=positive_float, default=0.5, help="Dirichlet concentration (label skew)")
    p.add_argument("--partition-seed", type=int, default=0,
                   help="seed of the split; every client of a federation must use the same one")
    p.add_argument("--client-id", default=None, help="stable id (default client-I)")
    p.add_argument("--local-epochs", type=non_negative_int, default=None,
                   help="override the local epochs the server asks for")
    p.add_argument("--slowdown", type=positive_float, default=1.0, help="train this many times slower (experiments)")
    p.add_argument("--threads", type=non_negative_int, default=1, help="torch CPU threads (0: torch's default)")
    p.add_argument("--dp-sgd-noise", type=non_negative_float, default=0.0,
                   help="sample-level DP-SGD in this client (Opacus): noise multiplier σ (0: off)")
    p.add_argument("--dp-sgd-clip", type=positive_float, default=1.0, help="DP-SGD: per-example gradient norm C")
    p.add_argument("--dp-sgd-delta", type=positive_float, default=1e-5, help="DP-SGD: δ at which ε is reported")
    p.add_argument("--amp", choices=AMP_CHOICES, default="off",
                   help="mixed-precision local training: bf16 (no loss scaling) or fp16 (with a gradient scaler)")
    p.add_argument("--connect-timeout", type=positive_float, default=600.0,
                   help="seconds to keep retrying while the server is not reachable (it may start later)")
    p.add_argument("--save-updates", type=Path, default=None, help="also write each uploaded delta here (audits)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log threshold")
    add_client_limit_flags(p)
    add_client_security_flags(p)


def add_client_limit_flags(p: argparse.ArgumentParser) -> None:
    """The client's own bounds on what a server may ask of it (docs/security.md, "What a client checks")."""
    g = p.add_argument_group("limits on what the server may ask (docs/security.md)")
    g.add_argument("--max-model-bytes", type=positive_int, default=None,
                   help="largest download this client allocates (default: 2 × its own model's raw size + 1 MiB)")
    g.add_argument("--max-local-epochs", type=positive_int, default=100,
                   help="refuse tasks asking for more local epochs (unless --local-epochs overrides the server's)")
    g.add_argument("--max-slowdown", type=positive_float, default=100.0,
                   help="refuse tasks asking for a larger slowdown option")
    g.add_argument("--min-download-rate", type=positive_float, default=1e6,
                   help="bytes/s: a download gets --download-grace + its size / this rate, then it is dropped")
    g.add_argument("--download-grace", type=positive_float, default=30.0,
                   help="seconds every download gets on top of its size-scaled time")
    g.add_argument("--max-bad-answers", type=positive_int, default=5,
                   help="exit non-zero after this many bad answers from the server in a row")
    g.add_argument("--retry-backoff", type=positive_float, default=0.5,
                   help="seconds before the first retry after a bad answer (doubles, jittered, up to 20 times this)")


def demo_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", type=positive_int, default=4,
                   help="client processes to start (each trains 1/N of the data)")
    p.add_argument("--rounds", type=positive_int, default=10, help="rounds to run")
    add_task_flags(p)
    p.add_argument("--run-dir", type=Path, default=None,
                   help="where metrics, plot and model go (default runs/<timestamp>)")
    p.add_argument("--strategy", default="fedavg", help=STRATEGY_HELP)
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the initial model, client sampling and the clients' shuffling")


def check_compression_flags(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Refuses codec and pruning settings that cannot work together, naming the flag to change."""
    from fedstream.server.publication.pruning_schedule import PruneSchedule

    if args.topk_fraction > 1:
        parser.error(f"--topk-fraction {args.topk_fraction}: must be in (0, 1]; 0.01 keeps 1% of each tensor")
    try:
        PruneSchedule.parse(args.prune_schedule, args.rounds)
    except ValueError as exc:
        parser.error(f"--prune-schedule: {exc}")
    if args.download_codec == "topk" and not args.incremental_download:
        parser.error("--download-codec topk keeps 1 weight in 100 of the full model; use it with "
                     "--incremental-download, where only the difference between versions is sparsified")
    if getattr(args, "mode", "sync") == "async" and (args.prune_schedule or args.incremental_download):
        parser.error("--prune-schedule and --incremental-download work with --mode sync only")


def run_server(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from fedstream.common.logs import setup_logging
    from fedstream.common.tasks import load_task
    from fedstream.server.core.client_settings import parse_client_settings
    from fedstream.server.core.config import ServerConfig
    from fedstream.server.core.coordinator import Coordinator, NotEnoughClients
    from fedstream.common.tasks.hf.adapter_files import save_adapter
    from fedstream.server.observe.watch import dashboard_starter, run_view
    from fedstream.server.publication.progress import RoundProgress
    from fedstream.server.transport.server import serve
    from fedstream.server.aggregation.strategies import make_strategy

    setup_logging(args.log_level)
    try:
        check_chunk_bytes(args.chunk_bytes)
    except ValueError as exc:
        parser.error(f"--chunk-bytes: {exc}")
    tune_malloc(args.chunk_bytes)
    try:
        strategy = make_strategy(args.strategy, dict(args.strategy_option))
    except ValueError as exc:
        parser.error(f"--strategy: {exc}")
    if args.dp:
        from fedstream.server.aggregation.privacy import make_dp_strategy

        try:
            strategy = make_dp_strategy(strategy, args.dp, args.clip or "1.0", args.noise_multiplier, args.delta,
                                        args.target_epsilon, dict(args.dp_option))
        except ValueError as exc:
            parser.error(naming_flag(f"--dp {args.dp}", exc))
    elif args.clip is not None or args.target_epsilon is not None or args.dp_option:
        parser.error("--clip, --target-epsilon and --dp-option need --dp central or --dp local")
    try:
        task = load_task(args.task, dict(args.task_option))
    except ValueError as exc:
        parser.error(f"--task: {exc}")
    if args.prune_schedule and "pruning" in task.unsupported:
        parser.error(f"--prune-schedule with --task {args.task}: {task.unsupported['pruning']}")
    try:
        client_settings = parse_client_settings(args.client_setting)
    except ValueError as exc:
        parser.error(f"--client-setting: {exc}")
    from fedstream.server.modes import AsyncSettings, make_mode

    if args.secure_aggregation:
        if args.mode not in ("sync", "secure-aggregation"):
            parser.error(f"--secure-aggregation runs its own synchronous rounds; drop --mode {args.mode}")
        args.mode = "secure-aggregation"
    elif any(v is not None for v in (args.secagg_clip, args.secagg_neighbours, args.secagg_threshold)):
        parser.error("--secagg-clip, --secagg-neighbours and --secagg-threshold need --secure-aggregation")
    if args.mode == "secure-aggregation":
        from fedstream.server.modes import SecAggSettings

        if args.secagg_clip is None:
            parser.error("--secure-aggregation needs --secagg-clip C: each coordinate is clipped to ±C before "
                         "masking, since the server cannot clip what it cannot see (try 0.1)")
        try:
            mode = make_mode("secure-aggregation", settings=SecAggSettings(
                args.secagg_clip, args.secagg_bits, args.secagg_neighbours, args.secagg_threshold))
        except ValueError as exc:
            parser.error(str(exc))
    elif args.mode == "async":
        mode = make_mode("async", settings=AsyncSettings.from_flags(args.buffer_size, args.staleness,
                                                                     args.staleness_exponent, args.max_staleness))
    else:
        mode = make_mode(args.mode)
    check_compression_flags(args, parser)
    run_dir = args.run_dir or default_run_dir()
    config = ServerConfig(rounds=args.rounds, clients_per_round=args.clients_per_round, min_clients=args.min_clients,
                          round_timeout=args.round_timeout, seed=args.seed, run_dir=run_dir,
                          chunk_bytes=args.chunk_bytes, upload_codec=args.upload_codec,
                          download_codec=args.download_codec, max_update_bytes=args.max_update_bytes,
                          wait_for_clients=args.wait_for_clients, local_epochs=args.local_epochs,
                          batch_size=args.batch_size, learning_rate=args.learning_rate,
                          client_settings=client_settings, max_sessions=args.max_sessions,
                          join_rate=args.join_rate, join_burst=args.join_burst,
                          max_transfers=args.max_transfers,
                          session_timeout=args.session_timeout, heartbeat_seconds=args.heartbeat_seconds,
                          topk_fraction=args.topk_fraction, error_feedback=args.error_feedback == "on",
                          incremental_download=args.incremental_download, prune_schedule=args.prune_schedule,
                          federated_eval=args.federated_eval, eval_every=args.eval_every,
                          reproducible=args.reproducible, sample_grace=args.sample_grace,
                          max_examples=args.max_examples, weight_cap_factor=args.weight_cap_factor,
                          max_update_norm=args.max_update_norm, norm_bound_factor=args.norm_bound_factor,
                          relay_ids=args.relay_ids)
    try:
        mode.check(config, strategy)
    except ValueError as exc:
        parser.error(f"--mode {args.mode}: {exc}")
    security = server_security(args, parser)
    progress = RoundProgress(config.rounds)
    view = run_view(run_dir, task=task.name, mode=args.mode, strategy=strategy.name, rounds=config.rounds,
                    dp=args.dp or "off", delta=args.delta if args.dp else None, address=args.address,
                    clients_per_round=config.clients_per_round, min_clients=config.min_clients,
                    buffer_size=args.buffer_size if args.mode == "async" else None,
                    secure_aggregation=args.mode == "secure-aggregation")

    def on_round(record: dict) -> None:
        progress.round_done(record)
        view.set_header(round=record["round"], version=record["version"],
                        epsilon=record.get("epsilon", record.get("dp_sgd_epsilon_max")))

    coordinator = Coordinator(task, strategy, config, mode, on_round=on_round, observer=view)
    view.rounds_restored(coordinator.runlog.records())
    view.set_header(round=coordinator.completed_rounds, version=coordinator.version)
    on_start = None if args.no_dashboard else dashboard_starter(view, args.dashboard, args.dashboard_token_file,
                                                                 getattr(args, "tls_dir", None))
    try:
        with progress:
            serve(coordinator, args.address, port_file=args.port_file, credentials=security.credentials, on_start=on_start,
                  auth=security.auth, byte_workers=args.max_workers, health_address=args.health_address)
    except NotEnoughClients as exc:
        print(f"fedstream server: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"fedstream server: {exc}", file=sys.stderr)
        return 1
    finally:
        view.close()
    written = save_adapter(task, coordinator.model, coordinator.global_state, run_dir)
    if written:
        print(f"adapter: {', '.join(str(path) for path in written)}")
    records = coordinator.runlog.records()
    evaluated = [r for r in records if r.get("eval_accuracy") is not None]
    if evaluated:
        last = evaluated[-1]
        rounds = plural(records[-1]["round"], "round")
        print(f"final accuracy {last['eval_accuracy']:.4f} after {rounds} (evaluated after round {last['round']}); "
              f"run directory {run_dir}")
    if coordinator.strategy_stop:
        print(f"ended early: {coordinator.strategy_stop}")
    if coordinator.stopping:
        print(f"stopped: {coordinator.stopping}")
    return 0 if coordinator.completed_rounds >= args.rounds or coordinator.strategy_stop or coordinator.stopping else 1


def run_client(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import torch

    from fedstream.client.runner import ClientConfig, FederatedClient
    from fedstream.client.server_checks import ClientLimits, ServerUntrusted, loggable
    from fedstream.common.logs import setup_logging
    from fedstream.common.training.partition import parse_partition
    from fedstream.common.tasks import load_task

    setup_logging(args.log_level)
    try:
        partition = parse_partition(args.partition)
    except ValueError as exc:
        parser.error(str(exc))
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        task = load_task(args.task, dict(args.task_option))
    except ValueError as exc:
        parser.error(f"--task: {exc}")
    client_id = args.client_id or f"client-{partition[0]}"
    from fedstream.client.device import resolve_device

    try:
        resolve_device(args.device)  # flag errors first, before the question of transport security
    except ValueError as exc:
        parser.error(str(exc))
    from fedstream.client.distributed import launched_by_torchrun, run_cluster_client

    dp_sgd = None
    if args.dp_sgd_noise > 0:
        from fedstream.client.dp_sgd import DpSgdSettings

        if launched_by_torchrun():
            parser.error("--dp-sgd-noise: DP-SGD runs in single-process clients; a torchrun cluster client would need "
                         "Opacus's distributed wrapper (drop --dp-sgd-noise or run one process)")
        if args.amp != "off":
            parser.error("--amp with --dp-sgd-noise: Opacus computes per-example gradients in float32; drop --amp")
        try:
            dp_sgd = DpSgdSettings(args.dp_sgd_noise, args.dp_sgd_clip, args.dp_sgd_delta)
        except ValueError as exc:
            parser.error(f"--dp-sgd-noise/--dp-sgd-clip/--dp-sgd-delta: {exc}")
    security = client_security(args, parser, client_id)
    config = ClientConfig(server=args.server, client_id=client_id, partition=partition,
                          partition_scheme=args.partition_scheme, alpha=args.alpha, partition_seed=args.partition_seed,
                          device=args.device, local_epochs=args.local_epochs, connect_timeout=args.connect_timeout,
                          slowdown=args.slowdown, save_updates=args.save_updates, credentials=security.credentials,
                          server_name=security.server_name, token=security.token,
                          upload_chunk_delay=args.upload_chunk_delay, amp=args.amp, dp_sgd=dp_sgd,
                          limits=ClientLimits(max_model_bytes=args.max_model_bytes,
                                              max_local_epochs=args.max_local_epochs, max_slowdown=args.max_slowdown,
                                              min_download_rate=args.min_download_rate,
                                              download_grace=args.download_grace,
                                              max_bad_answers=args.max_bad_answers,
                                              retry_backoff=args.retry_backoff))
    import grpc

    from fedstream.client.handshake import HandshakeFailed

    try:
        if launched_by_torchrun():
            return run_cluster_client(task, config)
        try:
            client = FederatedClient(task, config)
        except ValueError as exc:
            parser.error(str(exc))
        return client.run()
    except HandshakeFailed as exc:
        print(f"client {client_id}: {exc}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:
        print(f"client {client_id}: the server refused it: {exc.code().name}: {loggable(exc.details() or '')}",
              file=sys.stderr)
        return 1
    except ServerUntrusted as exc:
        print(f"client {client_id}: gave up on the server: {exc}", file=sys.stderr)
        return 1


def run_demo(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Server and N clients as separate processes on 127.0.0.1; the server's progress is shown here."""
    import subprocess

    run_dir = args.run_dir or default_run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    port_file = run_dir / "server.port"
    port_file.unlink(missing_ok=True)
    task_flags = ["--task", args.task] + [f for k, v in args.task_option for f in ("--task-option", f"{k}={v}")]
    cmd = [sys.executable, "-m", "fedstream.cli"]
    server = subprocess.Popen(cmd + ["server", "--address", "127.0.0.1:0", "--port-file", str(port_file),
                                     "--rounds", str(args.rounds), "--min-clients", str(args.clients),
                                     "--strategy", args.strategy, "--run-dir", str(run_dir), "--seed", str(args.seed),
                                     "--round-timeout", "300", "--log-level", "WARNING", "--insecure"] + task_flags)
    deadline = time.monotonic() + 300  # the server builds the task first (hf-causal-lm: the tiny model, once)
    while not port_file.exists() or not port_file.read_text().strip():
        if server.poll() is not None or time.monotonic() > deadline:
            print("the demo server did not start; see the messages above", file=sys.stderr)
            server.kill()
            return 1
        time.sleep(0.05)
    address = f"127.0.0.1:{port_file.read_text().strip()}"
    logs = run_dir / "logs"
    logs.mkdir(exist_ok=True)
    clients = []
    for i in range(args.clients):
        log_file = open(logs / f"client-{i}.log", "w")
        clients.append(subprocess.Popen(cmd + ["client", "--server", address, "--partition", f"{i}/{args.clients}",
                                               "--device", "auto", "--connect-timeout", "60", "--insecure"] + task_flags,
                                        stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ}))
    try:
        code = server.wait()
        for c in clients:
            try:
                c.wait(timeout=30)
            except subprocess.TimeoutExpired:
                c.kill()
    except KeyboardInterrupt:
        for p in [server, *clients]:
            p.terminate()
        return 130
    failed = [i for i, c in enumerate(clients) if c.returncode != 0]
    if failed:
        print(f"{plural(len(failed), 'client')} ({', '.join(f'client-{i}' for i in failed)}) exited with errors; "
              f"logs in {logs}", file=sys.stderr)
    print(f"metrics: {run_dir / 'metrics.jsonl'}  plot: {run_dir / 'accuracy.png'}  model: {run_dir / 'model.safetensors'}")
    return code or (1 if failed else 0)
