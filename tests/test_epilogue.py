"""The round epilogue runs one job at a time beside the round loop, in order, and hands its errors back."""

from __future__ import annotations

import threading
import time

import pytest

from fedstream.server.publication.epilogue import Epilogue


def test_jobs_run_one_at_a_time_in_submission_order() -> None:
    epilogue, seen, running = Epilogue(), [], threading.Event()

    def job(i: int) -> None:
        assert not running.is_set(), "two epilogues ran at once"
        running.set()
        time.sleep(0.02)
        seen.append(i)
        running.clear()

    for i in range(5):
        epilogue.submit(lambda i=i: job(i))
    epilogue.wait()
    assert seen == [0, 1, 2, 3, 4]


def test_submit_returns_while_the_job_runs() -> None:
    epilogue, release, done = Epilogue(), threading.Event(), threading.Event()

    def job() -> None:
        release.wait(timeout=10)
        done.set()

    epilogue.submit(job)
    assert not done.is_set(), "submit waited for the job it started"
    release.set()
    epilogue.wait()
    assert done.is_set()


def test_a_failed_job_is_reported_at_once_and_raised_on_the_next_call_once() -> None:
    reported: list[BaseException] = []
    epilogue = Epilogue(on_error=reported.append)
    epilogue.submit(lambda: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        epilogue.submit(lambda: None)
    assert [str(e) for e in reported] == ["disk full"]
    epilogue.wait()
