"""The round-mode interface: what the core asks a mode, and what a mode may ask the core.

The core owns sessions, transfers, upload intake and the one publication path; a mode decides which task a
client gets now, what happens to an accepted update, and when a version is published. The core calls the
`task_for`, `admit`, `upload_started`, `downloaded`, `aborted`, `client_gone` and `client_back` hooks under its lock (keep them
quick, no I/O) and `accept` and `exchange` outside it. `run` is the mode's driver: it runs on the round
thread until the run is over, waiting on `core.cond` and calling `core.publish` for each new version.

A multi-phase round (secure aggregation: keys, then shares, then masked updates, then unmasking material)
hands out EXCHANGE assignments from `task_for` (a phase name and an opaque payload), answers the clients'
Exchange calls in `exchange`, takes the masked uploads through `admit`/`accept` with its own manifest
(`upload_reference`), and publishes what it unmasked with `core.publish`. docs/architecture.md has an example.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Mapping

import torch

from fedstream.server.core import errors
from fedstream.server.core.messages import Assignment

if TYPE_CHECKING:
    from fedstream.server.aggregation.strategies import Strategy
    from fedstream.server.core.config import ServerConfig
    from fedstream.server.core.coordinator import Coordinator
    from fedstream.server.core.sessions import Session
    from fedstream.server.intake.spool import SpooledUpdate
    from fedstream.server.intake.upload import UploadSink


class RoundMode(ABC):
    name: str = ""
    served_versions: int = 1  # how many published versions stay downloadable (the current one, and older ones)
    accept_waits: bool = False  # whether accept may block (waiting for room): the transport then never runs it inline
    accepts_relays: bool = False  # whether a relay's partial sum may answer this mode's tasks

    def bind(self, core: "Coordinator") -> None:
        """Called once by the core's constructor, before any client can call."""
        self.core = core

    def check(self, config: "ServerConfig", strategy: "Strategy") -> None:
        """Refuses settings this mode cannot honour: raises ValueError naming the flag and what to do instead."""

    def restore(self, extra: Mapping[str, Any]) -> None:
        """The mode's own part of a checkpoint (what checkpoint_extra returned)."""

    def checkpoint_extra(self) -> dict[str, Any]:
        return {}

    def admit_client(self, client_id: str, capabilities: frozenset[str]) -> None:
        """A client joins with these capabilities (JoinRequest.capabilities); raise a Refusal to turn it away."""

    @abstractmethod
    def run(self) -> None:
        """Drives the run until `core.config.rounds` versions exist or the run is finished."""

    @abstractmethod
    def task_for(self, client_id: str) -> Assignment | None:
        """The client's work now, or None: the client waits (its long poll sleeps until `core.wake`)."""

    @abstractmethod
    def admit(self, client_id: str, session: "Session", header: Any) -> object:
        """Checks an upload's header against the mode's state; returns the mode's ticket for it or raises a
        Refusal (or errors.Duplicate for an upload already accepted)."""

    def upload_started(self, client_id: str, ticket: object, header: Any) -> None:
        """The upload passed every header check and now streams (mark it in flight)."""

    @abstractmethod
    def accept(self, sink: "UploadSink", update: "SpooledUpdate") -> None:
        """Folds a validated update (outside the core's lock); raise a Refusal to refuse it."""

    def upload_reference(self) -> Mapping[str, tuple[torch.dtype, tuple[int, ...]]]:
        """What an upload's manifest must match: the global model's names, dtypes and shapes by default."""
        return self.core.reference

    def aborted(self, sink: "UploadSink", reason: str) -> None:
        """An admitted upload broke before it was accepted."""

    def downloaded(self, client_id: str, nbytes: int) -> None:
        """A client finished downloading a version (for the record's bytes_down)."""

    def client_gone(self, client_id: str, reason: str) -> None:
        """The client left, or its session expired."""

    def client_back(self, client_id: str) -> None:
        """The client joined again with a new session (a restarted process)."""

    def current_round(self) -> int:
        return 0

    def evaluation_report(self, client_id: str, report: Any) -> None:
        """A client's score of a version it was asked to evaluate (federated evaluation)."""
        raise errors.stale(f"client {client_id} reported an evaluation; this server's {self.name} mode asks for none")

    def exchange(self, client_id: str, round_number: int, phase: str, payload: bytes) -> bytes:
        """A protocol message of a multi-phase round; the reply's payload."""
        raise errors.stale(f"client {client_id} sent a {phase!r} message; this server's {self.name} mode has no "
                           "message exchange")
