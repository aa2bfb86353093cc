"""Tests of taskforce.core.environment: an Environment is the mapping it
stands for, whatever base it was stored against, and a fleet's specs share
one base rather than each holding a copy of the daemon's environment."""

from __future__ import annotations

import json

import pytest

from taskforce.core import codec
from taskforce.core import effects as fx
from taskforce.core.environment import Environment, Environments, as_dict
from taskforce.core.model import HostFacts, ProcessSpec, build

BASE = {"PATH": "/usr/bin:/bin", "HOME": "/root", "LANG": "C", "Task_name": "a"}


def test_an_environment_is_the_mapping_it_stands_for() -> None:
    env = Environment(BASE, own=("Task_name", "b", "EXTRA", "1"), gone=("HOME",))
    want = {"PATH": "/usr/bin:/bin", "LANG": "C", "Task_name": "b", "EXTRA": "1"}
    assert env == want and want == env and env.as_dict() == want
    assert dict(env) == want and as_dict(env) == want and len(env) == len(want)
    assert sorted(env) == sorted(want) and dict(env.items()) == want
    assert env["Task_name"] == "b" and env.get("HOME") is None and "HOME" not in env
    assert "EXTRA" in env and "PATH" in env and env.get("PATH") == "/usr/bin:/bin"
    with pytest.raises(KeyError):
        env["HOME"]
    assert env != {**want, "HOME": "/root"} and env != dict(want, LANG="D")
    assert BASE["HOME"] == "/root", "the base is never changed"


def test_environments_share_a_base_and_rebase_when_they_differ_much() -> None:
    pool = Environments(max_own=2)
    first = pool.share(dict(BASE))
    second = pool.share(dict(BASE, Task_name="b"))
    dropped = pool.share({k: v for k, v in BASE.items() if k != "LANG"})
    assert second == dict(BASE, Task_name="b") and dropped == {
        k: v for k, v in BASE.items() if k != "LANG"
    }
    assert second._base is first._base is dropped._base
    other = pool.share({"X": "1", "Y": "2", "Z": "3"})
    assert other == {"X": "1", "Y": "2", "Z": "3"} and other._base is not first._base
    assert first == Environment(dict(BASE)) and first != second


def test_a_fleet_shares_one_copy_of_the_daemon_environment() -> None:
    environ = {f"VAR{i}": f"value {i}" for i in range(50)}
    config = {
        "tasks": {
            f"t{i}": {"commands": {"start": ("/bin/sleep", str(i))}, "count": 2} for i in range(20)
        }
    }
    specs = build(config, HostFacts(environ=environ, host="h", fqdn="h", pid=7), None)
    envs = [p.env for spec in specs.values() for p in spec.processes]
    assert all(isinstance(env, Environment) for env in envs)
    assert len({id(env._base) for env in envs}) == 1
    assert envs[3]["VAR7"] == "value 7" and envs[3]["Task_instance"] == "1"
    assert {env["Task_name"] for env in envs} == {f"t{i}" for i in range(20)}


def test_a_spec_takes_any_mapping_and_a_spawn_writes_a_plain_one() -> None:
    spec = ProcessSpec(argv=("x",), env={"A": "1"})
    assert isinstance(spec.env, Environment) and spec.env == {"A": "1"}
    spawn = fx.Spawn.of(spec, task="t", instance=0, generation=1)
    assert spawn.env is spec.env, "shared, not copied"
    plain = json.loads(json.dumps(codec.encode(spawn)))
    assert plain["env"] == {"A": "1"}
    assert codec.matches(spawn, plain)
    assert codec.decode(plain) == spawn
    assert codec.from_plain(codec.to_plain(spec)) == spec
