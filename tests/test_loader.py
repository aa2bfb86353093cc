"""The config is read on a worker thread, one read at a time, the last wins."""

from __future__ import annotations

import threading

from daemon_harness import wait_for

from taskforce.core import events as ev
from taskforce.loader import BackgroundLoad


def test_reads_asked_for_meanwhile_fold_into_one_more() -> None:
    gate = threading.Event()
    reads: list[str] = []
    woken = threading.Event()

    def load(source: str) -> ev.Event:
        reads.append(source)
        gate.wait(5)
        return ev.ConfigRejected(at=0.0, source=source, error=str(len(reads)))

    loads = BackgroundLoad(load, woken.set)
    loads.request("config")
    wait_for(lambda: reads == ["config"], what="the first read")
    loads.request("roles")
    loads.request("config")
    assert loads.take() is None, "nothing is ready while the read runs"
    gate.set()
    wait_for(woken.is_set, what="the wake-up")
    first = loads.take()
    assert isinstance(first, ev.ConfigRejected) and first.error == "1"
    second = wait_for(loads.take, what="the folded read")
    assert isinstance(second, ev.ConfigRejected) and second.source == "config"
    assert reads == ["config", "config"], "two asked for meanwhile make one more read"
    assert not loads.busy


def test_a_read_that_raises_is_a_rejected_config() -> None:
    def load(source: str) -> ev.Event:
        raise MemoryError

    loads = BackgroundLoad(load, lambda: None)
    loads.request("config")
    result = wait_for(loads.take, what="the read")
    assert isinstance(result, ev.ConfigRejected) and "MemoryError" in result.error
