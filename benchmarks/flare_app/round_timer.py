"""A server component that writes each FedAvg round's wall time (round started → aggregate ready) as JSON lines."""

from __future__ import annotations

import json
import time

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType


class RoundTimer(FLComponent):
    """Listens to ROUND_STARTED and AFTER_AGGREGATION, the span Flower's app times (configure → aggregate)."""

    def __init__(self, timing_file: str, model_bytes: int, clients: int) -> None:
        super().__init__()
        self.timing_file = timing_file
        self.model_bytes = model_bytes
        self.clients = clients
        self.started: dict[int, float] = {}

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            self.started.clear()
        current = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        if event_type == AppEventType.ROUND_STARTED:
            self.started[current] = time.time()
        elif event_type == AppEventType.AFTER_AGGREGATION and current in self.started:
            ended = time.time()
            record = {"round": current + 1, "seconds": ended - self.started[current], "ended": ended,
                      "clients": self.clients, "model_bytes": self.model_bytes}
            with open(self.timing_file, "a") as f:
                f.write(json.dumps(record) + "\n")
