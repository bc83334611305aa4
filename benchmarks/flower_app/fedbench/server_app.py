"""Flower server: FedAvg over all nodes for N rounds, writing each round's wall time to a JSON-lines file."""

from __future__ import annotations

import json
import time

from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedbench.model import make_model

app = ServerApp()


class TimedFedAvg(FedAvg):
    """FedAvg that records when each training round is configured and when its aggregate is ready."""

    def __init__(self, timing_file: str, model_bytes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.timing_file = timing_file
        self.model_bytes = model_bytes
        self.started: dict[int, float] = {}

    def configure_train(self, server_round, arrays, config, grid):
        self.started[server_round] = time.time()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        out = super().aggregate_train(server_round, replies)
        ended = time.time()
        record = {"round": server_round, "seconds": ended - self.started[server_round], "ended": ended,
                  "clients": sum(1 for r in replies if r.has_content()), "model_bytes": self.model_bytes}
        with open(self.timing_file, "a") as f:
            f.write(json.dumps(record) + "\n")
        return out


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    model = make_model(str(cfg["params"]))
    state = model.state_dict()
    model_bytes = sum(t.numel() * t.element_size() for t in state.values())
    clients = int(cfg["num-clients"])
    strategy = TimedFedAvg(str(cfg["timing-file"]), model_bytes, fraction_train=1.0, fraction_evaluate=0.0,
                           min_train_nodes=clients, min_available_nodes=clients)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(state), num_rounds=int(cfg["num-server-rounds"]))
