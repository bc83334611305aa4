"""FedAvg (McMahan et al. 2017, https://arxiv.org/abs/1602.05629): the example-weighted mean of client deltas."""

from __future__ import annotations

from fedstream.server.aggregation.strategies.base import Strategy


class FedAvg(Strategy):
    name = "fedavg"
