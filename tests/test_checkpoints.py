"""Checkpoints in the event log: the replay checks the state at each, and a
long log replays in parallel segments cut at them, with the same verdict as
one process."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_harness import Daemon, task, wait_for

from taskforce import tools
from taskforce.core.codec import freeze
from taskforce.core.snapshot import snapshot
from taskforce.core.supervisor import Supervisor
from taskforce.eventlog import (
    Checkpoints,
    Marker,
    Recorder,
    Step,
    find_checkpoint,
    read_log,
    write_steps,
)


def record_run(path: Path, *, checkpoint_bytes: int = 4000, rounds: int = 60) -> None:
    """A simulated run (kills, a crash loop, a reload) through the Recorder."""
    from taskforce.simulator import Simulation

    config = {
        "tasks": {
            "db": {"commands": {"start": ("/bin/db",)}},
            "web": {"commands": {"start": ("/bin/web",)}, "count": 3, "requires": "db"},
            "crashy": {"commands": {"start": ("/bin/crashy",)}},
        }
    }
    sim = Simulation()
    sim.boot(freeze(config))
    for turn in range(rounds):
        running = sim.running()
        sim.kill(running[("web", turn % 2)])
        if ("crashy", 0) in running:
            sim.exit(running[("crashy", 0)], 3)
        if turn == rounds // 2:
            config["tasks"]["web"]["count"] = 2
            sim.reload(freeze(config))
        sim.advance(1.5)
    core = Supervisor()
    checkpoints = Checkpoints(checkpoint_bytes, ratio=0)
    recorder = Recorder(str(path), snapshot=lambda: snapshot(core), checkpoints=checkpoints)
    for event, _ in sim.log:
        recorder(event, core.handle(event))
    recorder.close()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("checkpoints") / "run.jsonl"
    record_run(path)
    return path


def markers(path: Path) -> list[Marker]:
    return [item for item in read_log(str(path)) if isinstance(item, Marker)]


def replayed(path: Path, jobs: int = 1) -> tuple[int, str]:
    out = io.StringIO()
    return tools.replay(str(path), out=out, jobs=jobs), out.getvalue()


def test_checkpoints_are_written_and_each_is_checked(recorded: Path) -> None:
    checkpoints = [m for m in markers(recorded) if m.kind == "snapshot"]
    assert len(checkpoints) >= 5
    rc, text = replayed(recorded)
    assert rc == 0, text
    assert f"the state at {len(checkpoints)} checkpoints" in text


def _without(value: object, key: str) -> object:
    if isinstance(value, dict):
        return {k: _without(v, key) for k, v in value.items() if k != key}
    if isinstance(value, list):
        return [_without(item, key) for item in value]
    return value


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_log_written_before_a_field_existed_replays(
    recorded: Path, tmp_path: Path, jobs: int
) -> None:
    # As a log from the version before ``nice`` was added: no step and no
    # checkpoint carries it.  Every field at its default: nothing differs.
    lines = recorded.read_text().splitlines()
    older = tmp_path / "older.jsonl"
    older.write_text(
        "\n".join([lines[0]] + [json.dumps(_without(json.loads(x), "nice")) for x in lines[1:]])
        + "\n"
    )
    assert '"nice"' in recorded.read_text() and '"nice"' not in older.read_text()
    rc, text = replayed(older, jobs)
    assert rc == 0, text
    assert "checkpoints" in text


@pytest.mark.parametrize("jobs", [2, 3, 7])
def test_a_parallel_replay_says_what_one_process_says(recorded: Path, jobs: int) -> None:
    assert replayed(recorded, jobs) == replayed(recorded, 1)


def test_a_checkpoint_is_found_from_any_byte_before_it(recorded: Path) -> None:
    offsets = [m.offset for m in markers(recorded) if m.kind == "snapshot"]
    for here, following in zip(offsets, offsets[1:] + [None], strict=True):
        assert find_checkpoint(str(recorded), here) == here
        assert find_checkpoint(str(recorded), here - 1) == here
        assert find_checkpoint(str(recorded), here + 1) == following


def altered_copy(source: Path, target: Path, line_number: int, change) -> None:
    lines = source.read_text().splitlines()
    data = json.loads(lines[line_number])
    change(data)
    lines[line_number] = json.dumps(data, separators=(",", ":"))
    target.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("jobs", [1, 3])
def test_an_altered_step_late_in_the_log_is_found_at_its_step(
    recorded: Path, tmp_path: Path, jobs: int
) -> None:
    lines = recorded.read_text().splitlines()
    line_number = next(
        index
        for index in range(len(lines) * 5 // 6, len(lines))
        if '"type":"Spawn"' in lines[index]
    )
    step = json.loads(lines[line_number])["step"]

    def change(data):
        next(e for e in data["effects"] if e["type"] == "Spawn")["argv"] = ["/bin/other"]

    altered = tmp_path / "altered.jsonl"
    altered_copy(recorded, altered, line_number, change)
    rc, text = replayed(altered, jobs)
    assert rc == 1
    assert f"divergence at step {step}" in text
    assert "/bin/other" in text
    assert f"{step} steps matched before it" in text


@pytest.mark.parametrize("jobs", [1, 2])
def test_an_altered_checkpoint_is_reported_with_what_differs(
    recorded: Path, tmp_path: Path, jobs: int
) -> None:
    checkpoints = [m for m in markers(recorded) if m.kind == "snapshot"]
    middle = checkpoints[len(checkpoints) // 2]
    line_number = int(middle.where.rsplit(":", 1)[1]) - 1

    def change(data):
        data["snapshot"]["counters"]["starts"] += 1

    altered = tmp_path / "altered.jsonl"
    altered_copy(recorded, altered, line_number, change)
    rc, text = replayed(altered, jobs)
    assert rc == 1
    assert "the state differs from the checkpoint" in text
    assert "counters.starts: recorded" in text


def test_a_log_without_checkpoints_replays_whole_whatever_the_jobs(tmp_path: Path) -> None:
    path = tmp_path / "plain.jsonl"
    record_run(path, checkpoint_bytes=0, rounds=20)
    assert not [m for m in markers(path) if m.kind == "snapshot"]
    rc, text = replayed(path, 4)
    assert rc == 0, text
    assert (rc, text) == replayed(path, 1)
    assert text.endswith("every effect matched\n")


def test_write_steps_writes_checkpoints_as_the_recorder_does(tmp_path: Path) -> None:
    from taskforce.simulator import Simulation

    sim = Simulation()
    sim.boot(
        freeze(
            {
                "tasks": {"a": {"commands": {"start": ("/bin/a",)}, "count": 2}},
                "settings": {"start_limit": {"burst": 0}},
            }
        )
    )
    for _ in range(30):
        sim.kill(sim.running()[("a", 0)])
        sim.advance(2)
    core = Supervisor()

    def steps():
        for event, _ in sim.log:
            yield event, core.handle(event)

    path = tmp_path / "written.jsonl"
    write_steps(
        str(path), steps(), snapshot=lambda: snapshot(core), checkpoints=Checkpoints(2000, ratio=0)
    )
    assert [m for m in markers(path) if m.kind == "snapshot"]
    rc, text = replayed(path, 2)
    assert rc == 0, text


def test_a_big_state_is_checkpointed_less_often() -> None:
    checkpoints = Checkpoints(1000)
    assert not checkpoints.wrote(600)
    assert checkpoints.wrote(600)
    checkpoints.taken(200)  # 16 x 200 bytes is more than 1000
    assert not checkpoints.wrote(3000)
    assert checkpoints.wrote(200)
    checkpoints.taken(10)
    assert checkpoints.wrote(1000)
    assert not Checkpoints(0).wrote(10**9)


def test_no_checkpoint_right_after_one_step_bigger_than_the_interval() -> None:
    # The config of 5,000 tasks is a 10 MB line; its state would be 27 MB.
    checkpoints = Checkpoints(1000)
    assert not checkpoints.wrote(5000)  # the interval is now 16 x 5000
    assert not checkpoints.wrote(70_000)
    assert checkpoints.wrote(10_000)
    # With ratio 0 (every interval fixed), it is due as before.
    assert Checkpoints(1000, ratio=0).wrote(5000)


def test_lines_json_writes_but_orjson_refuses_are_still_read(tmp_path: Path) -> None:
    path = tmp_path / "nan.jsonl"
    path.write_text(
        '{"taskforce_eventlog":1,"part":0}\n'
        '{"step":0,"event":{"type":"TimerFired","at":NaN},"effects":[]}\n'
        '{"step":1,"event":{"type":"TimerFired","at":1e400},"effects":[]}\n'
    )
    steps = [item for item in read_log(str(path)) if isinstance(item, Step)]
    assert math.isnan(steps[0].event.at) and steps[1].event.at == math.inf


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"taskforce_eventlog":1}\n[1, 2]\n', "bad.jsonl:2: not an object"),
        (b'{"taskforce_eventlog":1}\n{"step":0,"event":"\xff"}\n', "bad.jsonl:2: not UTF-8"),
        (b'{"taskforce_eventlog":1}\n{"what":0}\n', "bad.jsonl:2: unknown line"),
        (b'{"step":0,"event":{"type":"Nope"},"effects":[]}\n', "bad.jsonl:1: not an event"),
    ],
)
def test_a_bad_line_is_named_by_file_and_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    rc, text = replayed(path)
    assert rc == 2
    assert message in text


def test_the_command_line_replays_in_parallel_and_refuses_bad_jobs(recorded: Path) -> None:
    command = [sys.executable, "-m", "taskforce", "replay", str(recorded)]
    done = subprocess.run([*command, "--jobs", "2"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "every effect matched, and the state at" in done.stdout
    bad = subprocess.run([*command, "--jobs", "-1"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert "--jobs" in bad.stderr


def test_a_real_run_with_checkpoints_replays_in_parallel(daemon: Daemon) -> None:
    """Kills, a watched file, a config edit and a roles edit, recorded by the
    daemon in 64 KiB files with a checkpoint every 2 KiB (settings.record),
    replay file by file with no divergence, in one process and in three."""
    m = daemon.marker
    watched = daemon.root / "app.conf"
    watched.write_text("1\n")

    def config(count: int) -> dict:
        return {
            "settings": {
                "record": {
                    "file": "ignored.jsonl",
                    "max_bytes": "64K",
                    "backups": 5,
                    "checkpoint_bytes": "2K",
                }
            },
            "tasks": {
                "db": task(
                    m,
                    "db",
                    events=[{"type": "file_change", "path": str(watched), "command": "stop"}],
                ),
                "web": task(m, "web", count=count, requires="db"),
                "batch": task(m, "batch", roles=["batch"]),
            },
        }

    daemon.write_roles("batch")
    daemon.write_config(config(2))
    daemon.start()
    daemon.wait_pids("web", 2)
    daemon.wait_pids("batch", 1)
    for _ in range(3):
        (victim,) = list(daemon.wait_pids("web", 2))[:1]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda v=victim: v not in daemon.pids("web") and len(daemon.pids("web")) == 2)
    (db,) = daemon.wait_pids("db", 1)
    watched.write_text("2\n")
    wait_for(lambda: daemon.pids("db") and db not in daemon.pids("db"), what="db restarted")
    daemon.write_config(config(3))
    daemon.wait_pids("web", 3)
    daemon.write_roles()
    wait_for(lambda: not daemon.pids("batch"), what="batch stopped by the roles edit")
    assert daemon.stop() == 0
    assert not (daemon.root / "ignored.jsonl").exists(), "--record names the file"
    files = sorted(daemon.root.glob("events.jsonl*"))
    assert 2 <= len(files) <= 6, f"rotated at 64K, 5 kept: {files}"
    checked = 0
    for path in files:
        one = replayed(path, 1)
        assert one[0] == 0, one[1]
        assert replayed(path, 3) == one
        if "checkpoints" in one[1]:
            checked += int(one[1].split("the state at ")[1].split()[0])
    assert checked >= 3


def test_a_timeline_read_by_head_ends_quietly(tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    record_run(path, rounds=600)
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskforce", "replay", "--timeline", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(100)
    proc.stdout.close()  # as `| head` does, long before the timeline ends
    errors = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0
    assert "Traceback" not in errors, errors


@pytest.mark.parametrize("jobs", [1, 3])
def test_an_event_the_core_fails_on_is_a_divergence_at_its_step(
    recorded: Path, tmp_path: Path, jobs: int
) -> None:
    lines = recorded.read_text().splitlines()
    line_number = next(
        index
        for index in range(len(lines) * 2 // 3, len(lines))
        if '"type":"ProcessExited"' in lines[index]
    )
    step = json.loads(lines[line_number])["step"]

    def change(data):
        data["event"]["pid"] = {"not": "a pid"}

    altered = tmp_path / "altered.jsonl"
    altered_copy(recorded, altered, line_number, change)
    rc, text = replayed(altered, jobs)
    assert rc == 1
    assert f"divergence at step {step}: the core failed: TypeError" in text
    assert f"{step} steps matched before it" in text
