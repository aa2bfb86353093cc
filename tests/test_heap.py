"""heap.trim: the free pages of a burst go back to the system, where libc can."""

from __future__ import annotations

import ctypes
import platform

import pytest

from taskforce import heap


def test_trim_works_where_libc_has_malloc_trim_and_is_a_no_op_elsewhere() -> None:
    has_it = hasattr(ctypes.CDLL(None), "malloc_trim")
    assert heap.trim() is has_it
    assert heap.trim() is has_it  # looked up once, asked again at will
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert has_it


def test_a_burst_freed_is_given_back() -> None:
    # Many blocks (what a recorded start-up leaves behind), then one that
    # lives on above them in the heap: once the burst is freed, glibc keeps
    # its pages (only a free top of the heap goes back by itself) until the
    # trim.
    if not hasattr(ctypes.CDLL(None), "malloc_trim") or not _resident_kib():
        pytest.skip("needs a libc with malloc_trim and /proc (glibc Linux)")
    burst = [bytearray(600) for _ in range(50_000)]  # past obmalloc: malloc's heap
    kept = bytearray(600)
    del burst
    before = _resident_kib()
    assert heap.trim()
    assert before - _resident_kib() > 10 * 1024, "a trim gives back the burst's 30 MB"
    del kept


def _resident_kib() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def test_the_event_log_writer_trims_after_a_big_line_only(tmp_path, monkeypatch) -> None:
    # A big fleet's start-up line is freed by the writer thread, after the
    # daemon's own trim: the writer trims again then, and only then.
    from taskforce import eventlog

    trims: list[int] = []
    monkeypatch.setattr(heap, "trim", lambda: trims.append(1) or True)
    recorder = eventlog.Recorder(str(tmp_path / "events.jsonl"), snapshot=dict)
    try:
        recorder._put("x" * 1000)
        recorder._put("y" * (eventlog._BIG_LINE + 1))
        recorder._put("z" * 1000)
    finally:
        recorder.close()
    lines = (tmp_path / "events.jsonl").read_text().split("\n")
    assert [len(line) for line in lines[1:-1]] == [1000, eventlog._BIG_LINE + 1, 1000]
    assert lines[-1] == ""
    assert trims == [1]
