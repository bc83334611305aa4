"""Builds the benchmark's FedAvg job (FLARE's PyTorch FedAvg recipe plus a round timer), submits it through the
admin API of a running FLARE system and waits for it to finish. Runs in FLARE's own env (flare_env.py).

    python job.py --admin-kit POC/example_project/prod_00/admin@nvidia.com --clients 4 --params 25M --rounds 3 \
        --timing-file rounds.jsonl --job-dir jobs
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from nvflare.client.config import ExchangeFormat  # noqa: E402
from nvflare.app_opt.pt.recipes.fedavg import FedAvgRecipe  # noqa: E402
from nvflare.fuel.flare_api.flare_api import new_secure_session  # noqa: E402

from model import make_model, parse_count  # noqa: E402
from round_timer import RoundTimer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin-kit", required=True, type=Path)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--params", default="25M")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timing-file", required=True)
    parser.add_argument("--job-dir", required=True, type=Path)
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args()
    params = parse_count(args.params)
    width = 4096 if params > 100_000_000 else (1024 if params >= 2_000_000 else 64)
    state = make_model(args.params, initialise=False).state_dict()
    model_bytes = sum(t.numel() * t.element_size() for t in state.values())
    recipe = FedAvgRecipe(
        name="fedbench", model={"class_path": "model.SyntheticMLP", "args": {"params": params, "width": width}},
        min_clients=args.clients, num_rounds=args.rounds, train_script=str(HERE / "client.py"),
        train_args=f"--params {args.params}", server_expected_format=ExchangeFormat.PYTORCH)
    recipe.add_server_file(str(HERE / "model.py"))
    recipe.add_client_file(str(HERE / "model.py"))
    recipe.add_server_file(str(HERE / "round_timer.py"))
    # the recipe has no public hook for an extra server component; its FedJob does
    recipe._job.to_server(RoundTimer(args.timing_file, model_bytes, args.clients), id="round_timer")
    recipe.export(str(args.job_dir))
    session = new_secure_session("admin@nvidia.com", str(args.admin_kit), timeout=60)
    try:
        job_id = session.submit_job(str(args.job_dir / "fedbench"))
        print(f"submitted job {job_id}", flush=True)
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            meta = session.get_job_meta(job_id)
            status = str(meta.get("status", ""))
            if status.startswith("FINISHED"):
                print(f"job {job_id} ended: {status}", flush=True)
                return 0 if status == "FINISHED:COMPLETED" else 1
            time.sleep(1.0)
        print(f"job {job_id} did not finish within {args.timeout:.0f} s", flush=True)
        session.abort_job(job_id)
        return 1
    finally:
        session.close()


if __name__ == "__main__":
    sys.exit(main())
