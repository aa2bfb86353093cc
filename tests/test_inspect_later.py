"""The stand-in for ``inspect`` (``taskforce.inspect_later``) changes nothing
but what is loaded: every dataclass comes out as the real module makes it,
and whoever asks more of ``inspect`` gets the real one."""

from __future__ import annotations

import subprocess
import sys
import textwrap

#: Prints, for every dataclass in the modules a daemon loads, its fields
#: (name, type, default, factory, init, compare) and whether it has a docstring.
_DESCRIBE = """
import dataclasses, sys
import taskforce.cli, taskforce.daemon, taskforce.control.server, taskforce.eventlog
def show(value):
    return "-" if value is dataclasses.MISSING else getattr(value, "__name__", repr(value))
for name in sorted(m for m in sys.modules if m.startswith("taskforce")):
    for value in sorted(vars(sys.modules[name]).values(), key=repr):
        if isinstance(value, type) and dataclasses.is_dataclass(value):
            fields = [
                (f.name, f.type, show(f.default), show(f.default_factory), f.init, f.compare)
                for f in dataclasses.fields(value)
            ]
            print(name, value.__qualname__, fields, value.__doc__ is not None)
"""


def _run(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout


def test_a_daemon_starts_without_the_real_inspect() -> None:
    out = _run(
        """
        import sys
        import taskforce.cli, taskforce.daemon
        print(type(sys.modules["inspect"]).__name__)
        print(sorted({"ast", "dis"} & set(sys.modules)))
        """
    )
    assert out.split("\n")[:2] == ["_InspectLater", "[]"]


def test_a_daemon_with_a_control_socket_starts_without_it_too(tmp_path) -> None:
    # h11 declares a dataclass without a docstring, for which ``dataclasses``
    # asks ``inspect.signature``: the control server imports h11 with the
    # stand-in answering "no signature" (``WithoutSignatures``).
    config = tmp_path / "one.conf"
    config.write_text("tasks: {one: {commands: {start: [sleep, '60']}}}\n")
    out = tmp_path / "modules"
    argv = ["taskforce", "-e", "-f", str(config), "-r", "-", "--expires", "1"]
    argv += ["-w", str(tmp_path / "control.sock")]
    code = f"""
        import atexit, sys
        atexit.register(lambda: open({str(out)!r}, "w").write("\\n".join(sys.modules)))
        sys.argv = {argv!r}
        from taskforce.cli import main
        sys.exit(main())
        """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    loaded = set(out.read_text().split())
    assert "h11" in loaded  # (the control server did start)
    assert not loaded & {"ast", "dis"}, "the real inspect was loaded"


def test_without_signatures_says_no_signature_only_while_in_force() -> None:
    out = _run(
        """
        from taskforce.inspect_later import WithoutSignatures  # (before dataclasses)
        import dataclasses
        with WithoutSignatures():
            @dataclasses.dataclass
            class Quiet:
                x: int = 1
        @dataclasses.dataclass
        class Asked:
            x: int = 1
        print(Quiet.__doc__, "|", Asked.__doc__)
        import inspect
        with WithoutSignatures():  # the real module is loaded: nothing changes
            print(inspect.signature(Quiet))
        """
    )
    assert out.split("\n")[:2] == ["Quiet | Asked(x: int = 1)", "(x: int = 1) -> None"]


def test_dataclasses_come_out_as_with_the_real_inspect() -> None:
    with_stand_in = _run(_DESCRIBE)
    with_real = _run("import inspect\n" + _DESCRIBE)
    assert "TaskSpec" in with_real  # (the probe itself works)
    assert with_stand_in == with_real


def test_asking_for_more_loads_the_real_module_in_its_place() -> None:
    out = _run(
        """
        import sys
        from taskforce import inspect_later
        stand_in = sys.modules["inspect"]
        assert isinstance(stand_in, inspect_later._InspectLater)
        signature = stand_in.signature(len)   # not the stand-in's to answer
        import inspect
        assert inspect is sys.modules["inspect"] and inspect is not stand_in
        assert stand_in.signature is inspect.signature
        print(signature)
        """
    )
    assert out.strip() == "(obj, /)"


def test_its_annotations_of_a_class_are_the_real_ones() -> None:
    out = _run(
        """
        import sys
        from taskforce import inspect_later
        stand_in = sys.modules["inspect"]

        class Base:
            a: int
        class Child(Base):
            b: "str"
        class Bare:
            pass
        def function(x: int) -> str: ...

        cases = [Base, Child, Bare, type, int, function]
        ours = [stand_in.get_annotations(case) for case in cases]
        del sys.modules["inspect"]
        import inspect
        assert ours == [inspect.get_annotations(case) for case in cases], ours
        print(ours)
        """
    )
    assert "'b': 'str'" in out and "'a'" in out.split("}")[0]


def test_it_leaves_a_loaded_inspect_alone() -> None:
    out = _run(
        """
        import inspect, sys
        import taskforce.inspect_later
        print(sys.modules["inspect"] is inspect)
        """
    )
    assert out.strip() == "True"
