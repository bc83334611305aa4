"""A round's epilogue (evaluation, metrics line, checkpoint) run beside the next round instead of before it.

Once a round's new version is published, nothing in the next round waits for the old round's evaluation or
checkpoint, so those run on one background thread while clients already download the new version. At most
one epilogue is in flight: `submit` and `wait` first finish the previous one (and re-raise its error), so
records and checkpoints stay in round order and at most one finished version is held for them.
"""

from __future__ import annotations

import threading
from typing import Callable


class Epilogue:
    """One background job at a time; a failure calls on_error at once and is raised again by the next call."""

    def __init__(self, on_error: Callable[[BaseException], None] | None = None, name: str = "round-epilogue") -> None:
        self.name = name
        self.on_error = on_error
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, job: Callable[[], None]) -> None:
        """Runs job on a new thread once the previous one has finished."""
        self.wait()
        self._thread = threading.Thread(target=self._run, args=(job,), name=self.name, daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Returns once no epilogue is running; raises the error of the last one, if it failed."""
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _run(self, job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as exc:  # re-raised by the next submit or wait, on the round loop's thread
            self._error = exc
            if self.on_error is not None:
                self.on_error(exc)
