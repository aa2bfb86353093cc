"""The order of tasks by ``requires``: cycles found, start order given.

Both walk the requires graph iteratively, so a chain of thousands of tasks
cannot exhaust the stack, and in sorted order, so the result never depends
on the order of a mapping.

This module must never do IO.
"""

from __future__ import annotations

from collections.abc import Mapping

from taskforce.core.specs import TaskSpec


def find_cycle(specs: Mapping[str, TaskSpec]) -> list[str] | None:
    """A requires cycle as a list of names (first repeated last), or None.

    Iterative, so a chain of thousands of tasks cannot exhaust the stack.
    """
    done: set[str] = set()
    for root in sorted(specs):
        if root in done:
            continue
        trail: list[str] = [root]
        on_trail = {root}
        todo = [iter(specs[root].requires)]
        while todo:
            required = next(todo[-1], None)
            if required is None:
                todo.pop()
                finished = trail.pop()
                on_trail.discard(finished)
                done.add(finished)
                continue
            if required not in specs or required in done:
                continue
            if required in on_trail:
                return trail[trail.index(required) :] + [required]
            trail.append(required)
            on_trail.add(required)
            todo.append(iter(specs[required].requires))
    return None


#: The last order made, and the specs it was made from: a reload that
#: changes no task's name or requires finds its order here (a pure function
#: of those, so keeping it changes nothing but the time).
_LAST: list[tuple[Mapping[str, TaskSpec], list[str]]] = []


def start_order(specs: Mapping[str, TaskSpec]) -> list[str]:
    """Names with every task after the tasks it requires; ties by name.

    Assumes no cycle (``build`` rejects them); iterative like ``find_cycle``.
    ``specs`` is kept for the next call, not copied: it must not be changed
    afterwards (the supervisor hands a mapping made for the call).
    """
    last = _LAST[0] if _LAST else None
    if (
        last is not None
        and len(last[0]) == len(specs)
        and last[0].keys() == specs.keys()
        and all(
            spec is last[0][name] or spec.requires == last[0][name].requires
            for name, spec in specs.items()
        )
    ):
        return list(last[1])
    order = _start_order(specs)
    _LAST[:] = [(specs, list(order))]
    return order


def _start_order(specs: Mapping[str, TaskSpec]) -> list[str]:
    order: list[str] = []
    placed: set[str] = set()
    for root in sorted(specs):
        if root in placed:
            continue
        placed.add(root)
        stack = [(root, iter(sorted(specs[root].requires)))]
        while stack:
            name, pending = stack[-1]
            required = next(pending, None)
            if required is None:
                stack.pop()
                order.append(name)
            elif required in specs and required not in placed:
                placed.add(required)
                stack.append((required, iter(sorted(specs[required].requires))))
    return order
