"""What each task costs: CPU, memory, descriptors, OOM kills.

The parsing of the kernel's files against sample text; the sampler's
half-second hold; then a real daemon, with a cgroup per slot where the host
allows it and with ``TASKFORCE_CGROUPS=off`` (the process group, from
``/proc``): a task that holds 50 MB and has burnt half a CPU-second, one
that holds 20 more descriptors, and the figures ``/status/tasks``,
``/metrics`` and ``tfctl status`` show are what ``/proc`` says.
"""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import FEATURES, Daemon, task, wait_for
from test_control import FAST, answers, call, short_dir
from test_tracking import MODES

from taskforce import costs, tfctl
from taskforce.tfformat import format_table, human_bytes, status_rows

needs_proc = pytest.mark.skipif(not FEATURES.proc, reason="the figures come from /proc")

# ------------------------------------------------------------------ parsing

STAT = (
    "4242 (evil) (name) S 1 4240 4240 0 -1 4194560 1200 0 0 0 "
    "150 50 7 3 20 0 1 0 987654 123456789 12800 18446744073709551615 "
    "1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0"
)


def test_a_stat_line_is_read_after_the_last_parenthesis() -> None:
    stat = costs.parse_stat(STAT)
    assert stat == costs.Stat(pgid=4240, ticks=150 + 50 + 7 + 3, start=987654, rss=12800)
    assert costs.parse_stat("garbage") is None
    assert costs.parse_stat("1 (x) S 1") is None


def test_flat_keyed_files() -> None:
    cpu = "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n"
    assert costs.parse_keyed(cpu, "usage_usec") == 2500000
    events = "low 0\nhigh 0\nmax 3\noom 2\noom_kill 1\noom_group_kill 0\n"
    assert costs.parse_keyed(events, "oom_kill") == 1
    assert costs.parse_keyed(events, "oom") == 2, "a name, not a prefix"
    assert costs.parse_keyed(events, "nope") is None
    assert costs.parse_keyed("oom_kill x\n", "oom_kill") is None


def test_cgroup_paths() -> None:
    assert costs.parse_cgroup("12:memory:/x\n0::/a/taskforce-1f/web.0\n") == "/a/taskforce-1f/web.0"
    assert costs.parse_cgroup("4:memory:/x\n") is None
    mountinfo = (
        "25 30 0:23 / /proc rw - proc proc rw\n"
        "41 31 0:38 /sub /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw\n"
    )
    assert costs.parse_cgroup2_mount(mountinfo) == ("/sub", "/sys/fs/cgroup/unified")
    assert costs.parse_cgroup2_mount("25 30 0:23 / /proc rw - proc proc rw\n") is None
    assert costs.slot_folder_in("/a/taskforce-1f/web.0", "web", 0) == "/a/taskforce-1f/web.0"
    assert costs.slot_folder_in("/a/taskforce-1f/web.0/inner", "web", 0) == "/a/taskforce-1f/web.0"
    assert costs.slot_folder_in("/a/taskforce-1f/web.1", "web", 0) is None
    assert costs.slot_folder_in("/a/web.0", "web", 0) is None
    assert costs.slot_folder_in("/t/taskforce-9/a%20b.2", "a b", 2) == "/t/taskforce-9/a%20b.2"


def test_figures_go_to_slots_tasks_and_metrics() -> None:
    tasks: dict[str, Any] = {
        "web": {
            "processes": [
                {"instance": 0, "pid": 10},
                {"instance": 1, "pid": 11},
                {"instance": 2, "state": "backoff"},
            ]
        },
        'we"ird': {"processes": []},
    }
    figures = {
        ("web", 0, 10): {
            "cpu_seconds": 1.5,
            "cpu_percent": 3.0,
            "memory_bytes": 1000,
            "open_fds": 4,
        },
        ("web", 1, 11): {
            "cpu_seconds": 0.25,
            "cpu_percent": 0.5,
            "memory_bytes": 24,
            "open_fds": 5,
            "oom_kills": 2,
        },
        ("web", 1, 99): {"cpu_seconds": 7.0},  # another process than the slot's
    }
    costs.annotate(tasks, figures)
    web = tasks["web"]
    assert web["processes"][0]["memory_bytes"] == 1000
    assert "cpu_seconds" not in web["processes"][2]
    assert (web["cpu_seconds"], web["cpu_percent"], web["memory_bytes"]) == (1.75, 3.5, 1024)
    assert (web["open_fds"], web["oom_kills"]) == (9, 2)
    assert "cpu_seconds" not in tasks['we"ird']
    text = costs.metrics_text(figures)
    assert "# TYPE taskforce_task_cpu_seconds_total counter" in text
    assert "# TYPE taskforce_task_memory_bytes gauge" in text
    assert 'taskforce_task_oom_kills_total{task="web",instance="1"} 2' in text
    assert 'taskforce_task_open_fds{task="web",instance="0"} 4' in text
    assert costs.metrics_text({}) == ""


def test_human_units_and_the_status_columns() -> None:
    assert [human_bytes(v) for v in (0, 1023, 1024, 46_347_468, 3 << 30)] == [
        "0B",
        "1023B",
        "1.0K",
        "44.2M",
        "3.0G",
    ]
    tasks: dict[str, Any] = {
        "a": {"processes": [{"instance": 0, "state": "running", "pid": 5, "restarts": 0}]},
        "b": {"state": "off", "control": "off", "processes": []},
    }
    plain = status_rows(tasks, 0.0)
    assert plain[0] == ["TASK", "STATE", "PID", "UPTIME", "RESTARTS", "INFO"], "none measured"
    tasks["a"]["processes"][0].update(cpu_percent=3.14, memory_bytes=47_395_635)
    rows = status_rows(tasks, 0.0)
    assert rows[0] == ["TASK", "STATE", "PID", "UPTIME", "RESTARTS", "CPU", "MEM", "INFO"]
    assert rows[1][5:7] == ["3.1%", "45.2M"]
    assert rows[2][5:7] == ["-", "-"]
    assert "3.1%" in format_table(rows)


@needs_proc
def test_a_sample_is_held_then_taken_afresh() -> None:
    now = [100.0]
    sampler = costs.Sampler(hold=0.5, clock=lambda: now[0])
    me = ("me", 0, os.getpgrp())
    first = sampler.sample([me])
    assert set(first[me]) >= {"cpu_seconds", "cpu_percent", "memory_bytes", "open_fds"}
    assert first[me]["memory_bytes"] > 0 and first[me]["open_fds"] > 0
    generation = sampler.generation
    now[0] += 0.2
    assert sampler.sample([me]) is first and sampler.generation == generation
    assert sampler.sample([me, ("gone", 0, 2**22 + 1)]) is not first, "other slots: afresh"
    now[0] += 0.6
    again = sampler.sample([me])
    assert sampler.generation == generation + 2 and again is not first
    assert again[me]["cpu_seconds"] >= first[me]["cpu_seconds"]
    assert ("gone", 0, 2**22 + 1) not in again


def test_without_proc_there_are_no_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host with no /proc and no libproc (the BSDs): nothing is read, and
    the keys are absent rather than wrong."""
    monkeypatch.setattr(costs, "_PROC", False)
    monkeypatch.setattr(costs, "_DARWIN", None)
    sampler = costs.Sampler()
    assert sampler.sample([("me", 0, os.getpgrp())]) == {}
    tasks = {"me": {"processes": [{"instance": 0, "pid": os.getpid()}]}}
    assert costs.annotate(tasks, {}) == {"me": {"processes": [{"instance": 0, "pid": os.getpid()}]}}
    assert costs.metrics_text({}) == ""


@needs_proc
def test_a_sample_off_the_loop_is_taken_on_a_thread_and_collected() -> None:
    now = [100.0]
    sampler = costs.Sampler(hold=0.5, clock=lambda: now[0])
    me = ("me", 0, os.getpgrp())
    woken = threading.Event()
    assert sampler.held((me,)) is None and not sampler.busy
    sampler.begin((me,), woken.set)
    sampler.begin((me,), woken.set)  # one at a time: the second is a no-op
    assert woken.wait(10), "the worker wakes the loop"
    assert sampler.done and sampler.held((me,)) is None, "not in until collected"
    generation = sampler.generation
    assert sampler.collect() is True and not sampler.busy
    assert sampler.generation == generation + 1
    figures = sampler.held((me,))
    assert figures is not None and figures[me]["open_fds"] > 0
    other = (me, ("new", 0, 2**22 + 1))
    assert sampler.held(other) is None, "other slots need a fresh sample"
    assert sampler.held(other, any_slots=True) is figures, "unless the request waited for it"
    assert sampler.collect() is False, "nothing more to collect"


# ------------------------------------------------------------ a real daemon

#: Holds 50 MB, burns half a CPU-second, says so, then sleeps.
HOG = (
    "import sys, time\n"
    "block = bytearray(50 << 20)\n"
    "for i in range(0, len(block), 4096): block[i] = 1\n"
    "while time.process_time() < 0.5: pass\n"
    "open(sys.argv[3], 'w').close()\n"
    "time.sleep(1000)\n"
)
#: Holds 20 more descriptors.
FDS = (
    "import os, sys, time\n"
    "held = [os.open(os.devnull, os.O_RDONLY) for _ in range(20)]\n"
    "open(sys.argv[3], 'w').close()\n"
    "time.sleep(1000)\n"
)


def _proc(pid: int) -> tuple[float, int, int]:
    """(CPU seconds, resident bytes, open descriptors) as /proc says."""
    stat = costs.parse_stat(Path(f"/proc/{pid}/stat").read_text())
    assert stat is not None
    resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return stat.ticks / os.sysconf("SC_CLK_TCK"), resident, len(os.listdir(f"/proc/{pid}/fd"))


def _slot(sock: str, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    code, _, body = call(sock, "/status/tasks")
    assert code == 200
    task = json.loads(body)[name]
    return task, task["processes"][0]


@needs_proc
@pytest.mark.parametrize("mode", MODES)
def test_status_metrics_and_tfctl_show_what_proc_says(
    daemon: Daemon, mode: str, capsys: pytest.CaptureFixture[str]
) -> None:
    m = daemon.marker
    hogged, opened = daemon.root / "hogged", daemon.root / "opened"
    defs = {
        "hog": task(m, "hog", HOG, args=(str(hogged),)),
        "fds": task(m, "fds", FDS, args=(str(opened),)),
    }
    sock = str(short_dir(daemon.root) / "s.taskforce")
    daemon.write_config({"settings": FAST, "tasks": defs})
    daemon.start("-w", sock, "-A", env={"TASKFORCE_CGROUPS": "auto" if mode == "cgroup" else "off"})
    wait_for(lambda: os.path.exists(sock) and answers(sock), what="the control socket")
    daemon.wait_log("process" if mode == "marker" else "a cgroup per slot")
    (hog,) = daemon.wait_pids("hog", 1)
    (fds,) = daemon.wait_pids("fds", 1)
    wait_for(lambda: hogged.exists() and opened.exists(), what="the tasks under way")

    def hog_matches() -> dict[str, Any] | None:
        task, slot = _slot(sock, "hog")
        cpu, resident, _ = _proc(hog)
        if slot.get("pid") != hog or abs(slot.get("cpu_seconds", -1) - cpu) > 0.15:
            return None
        if not 0.8 * resident <= slot["memory_bytes"] <= 1.5 * resident:
            return None
        return task

    hog_task = wait_for(hog_matches, what="the hog's figures to match /proc")
    hog_slot = hog_task["processes"][0]
    assert hog_slot["memory_bytes"] >= 50 << 20
    assert hog_slot["cpu_seconds"] >= 0.45
    assert hog_slot["cpu_percent"] >= 0 and hog_slot["open_fds"] >= 3
    assert hog_task["memory_bytes"] == hog_slot["memory_bytes"], "the task's sum"
    if mode == "cgroup":
        # Then the CPU time is the slot's cgroup's, whose folder /proc names.
        mount = costs.parse_cgroup2_mount(Path("/proc/self/mountinfo").read_text())
        where = costs.parse_cgroup(Path(f"/proc/{hog}/cgroup").read_text())
        assert mount and where and costs.slot_folder_in(where, "hog", 0) == where
        folder = Path(mount[1]) / where[len(mount[0].rstrip("/")) :].lstrip("/")
        usage = costs.parse_keyed((folder / "cpu.stat").read_text(), "usage_usec")
        assert usage is not None and abs(usage / 1e6 - _slot(sock, "hog")[1]["cpu_seconds"]) < 0.15

    def fds_match() -> bool:
        _, slot = _slot(sock, "fds")
        return slot.get("open_fds") == _proc(fds)[2]

    wait_for(fds_match, what="the descriptors to match /proc")
    assert _slot(sock, "fds")[1]["open_fds"] >= 23

    code, headers, text = call(sock, "/metrics")
    assert code == 200 and headers["content-type"].startswith("text/plain")
    kinds = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    assert kinds["taskforce_task_cpu_seconds_total"] == "counter"
    assert kinds["taskforce_task_memory_bytes"] == "gauge"
    assert kinds["taskforce_task_open_fds"] == "gauge"
    if "taskforce_task_oom_kills_total" in kinds:
        assert kinds["taskforce_task_oom_kills_total"] == "counter"
    samples = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples['taskforce_task_memory_bytes{task="hog",instance="0"}'] >= 50 << 20
    assert samples['taskforce_task_cpu_seconds_total{task="hog",instance="0"}'] >= 0.45
    assert samples['taskforce_task_open_fds{task="fds",instance="0"}'] >= 23

    assert tfctl.main(["-s", sock, "status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["TASK", "STATE", "PID", "UPTIME", "RESTARTS", "CPU", "MEM", "INFO"]
    row = next(line.split() for line in lines if line.startswith("hog[0]"))
    assert row[5].endswith("%") and re.fullmatch(r"\d+\.\dM", row[6]), row
    assert float(row[6][:-1]) >= 50


def test_the_processes_of_a_cgroup_and_its_sub_cgroups(tmp_path: Path) -> None:
    (tmp_path / "cgroup.procs").write_text("12\n34\n")
    (tmp_path / "cpu.stat").write_text("usage_usec 1\n")
    assert costs._pids_below(str(tmp_path)) == [12, 34]
    (tmp_path / "inner").mkdir()
    (tmp_path / "inner" / "cgroup.procs").write_text("56\n")
    assert sorted(costs._pids_below(str(tmp_path)) or ()) == [12, 34, 56]
    assert costs._pids_below(str(tmp_path / "gone")) is None
