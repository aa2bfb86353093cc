"""The slot lifecycle table is the spec: it changes only on purpose.

``taskforce.core.lifecycle.table()`` (read back from the ``transitions``
machine) must equal the golden copy in ``tests/lifecycle_table.golden``.  A
deliberate change to the lifecycle updates the golden file in the same
commit -- ``python tests/test_lifecycle_golden.py --update`` rewrites it --
so the diff shows reviewers exactly which transitions moved.

Also checked: every trigger the core pulls is declared (and every declared
one is pulled), the machine holds exactly ``TRANSITIONS``, and the table is
total in h2's sense: for every (state, trigger) pair the machine either moves
to the declared destination or raises ``MachineError`` leaving the state as
it was.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from transitions import MachineError

from taskforce.core.lifecycle import LIFECYCLE, TRANSITIONS, SlotState, table

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "lifecycle_table.golden"
CORE = ROOT / "taskforce" / "core"

HEADER = (
    "# The slot lifecycle: trigger, source state, destination state.\n"
    "# Generated from taskforce.core.lifecycle.table(); update it on purpose with\n"
    "#   python tests/test_lifecycle_golden.py --update\n"
)


def render(rows: list[tuple[str, str, str]]) -> str:
    width = max(len(trigger) for trigger, _, _ in rows)
    lines = [f"{trigger:<{width}}  {source} -> {dest}" for trigger, source, dest in rows]
    return HEADER + "\n".join(lines) + "\n"


def parse(text: str) -> list[tuple[str, str, str]]:
    rows = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        trigger, source, arrow, dest = line.split()
        assert arrow == "->", line
        rows.append((trigger, source, dest))
    return rows


def fired_triggers() -> dict[str, list[str]]:
    """Trigger name -> where the core pulls it (``LIFECYCLE.fire(slot, "x")``)."""
    found: dict[str, list[str]] = {}
    for path in sorted(CORE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "fire"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "LIFECYCLE"
            ):
                continue
            where = f"{path.name}:{node.lineno}"
            trigger = node.args[1] if len(node.args) > 1 else None
            assert isinstance(trigger, ast.Constant) and isinstance(trigger.value, str), (
                f"{where}: pull triggers by literal name, so this test can see them"
            )
            found.setdefault(trigger.value, []).append(where)
    return found


def test_the_table_matches_the_golden_copy() -> None:
    assert table() == parse(GOLDEN.read_text(encoding="utf-8")), (
        "the lifecycle changed; if on purpose, run "
        "`python tests/test_lifecycle_golden.py --update` and commit the diff"
    )


def test_the_machine_holds_exactly_the_declared_transitions() -> None:
    declared = sorted(
        (trigger, source.name, dest.name)
        for trigger, sources, dest in TRANSITIONS
        for source in sources
    )
    assert table() == declared


def test_the_moves_a_slot_fires_by_are_the_machines() -> None:
    # ``fire`` looks moves up in a map made from TRANSITIONS (the machine is
    # built only when asked for): it must allow exactly what the machine does.
    read_back = {
        (SlotState[source], trigger): SlotState[str(transition.dest)]
        for trigger, event in LIFECYCLE.machine.events.items()
        for source, moves in event.transitions.items()
        for transition in moves
    }
    assert LIFECYCLE.moves == read_back


def test_every_trigger_the_core_pulls_is_declared() -> None:
    declared = {trigger for trigger, _, _ in TRANSITIONS}
    fired = fired_triggers()
    assert fired, "found no LIFECYCLE.fire calls: has the core changed shape?"
    undeclared = {name: where for name, where in fired.items() if name not in declared}
    assert not undeclared, f"pulled but not in TRANSITIONS: {undeclared}"


def test_every_declared_trigger_is_pulled_somewhere() -> None:
    unused = {trigger for trigger, _, _ in TRANSITIONS} - set(fired_triggers())
    assert not unused, f"declared but never pulled by the core: {sorted(unused)}"


class _Probe:
    """A stand-in slot: the machine needs only somewhere to keep ``state``."""


ALLOWED = {(trigger, source): dest for trigger, sources, dest in TRANSITIONS for source in sources}
TRIGGERS = sorted({trigger for trigger, _, _ in TRANSITIONS})


@pytest.mark.parametrize("trigger", TRIGGERS)
@pytest.mark.parametrize("state", list(SlotState), ids=lambda s: s.name)
def test_every_state_and_trigger_pair_moves_as_declared_or_refuses(
    state: SlotState, trigger: str
) -> None:
    probe = _Probe()
    LIFECYCLE.attach(probe)
    try:
        LIFECYCLE.machine.set_state(state, model=probe)
        dest = ALLOWED.get((trigger, state))
        if dest is None:
            with pytest.raises(MachineError):
                LIFECYCLE.fire(probe, trigger)
            assert probe.state is state  # type: ignore[attr-defined]
        else:
            LIFECYCLE.fire(probe, trigger)
            assert probe.state is dest  # type: ignore[attr-defined]
    finally:
        LIFECYCLE.detach(probe)


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit("usage: python tests/test_lifecycle_golden.py --update")
    GOLDEN.write_text(render(table()), encoding="utf-8")
    print(f"wrote {GOLDEN} ({len(table())} transitions)")
