"""Reconcile: apply a new config (or roles) to what runs.

A ``ConfigLoaded`` event is built into task specs, diffed against the tasks
the supervisor has (added, changed, removed -- by name), and applied: a
removed task is marked to drain, a changed one gets its new spec (the
converge pass restarts only the slots whose process spec differs), the
operator's overrides are kept or dropped, the start order and the watches
follow.  One summary line says what a reload did (``slots.ReloadNote``).

This module must never do IO, read a clock or draw random numbers.
"""

from __future__ import annotations

from taskforce.core import events as ev
from taskforce.core.convergence import Convergence
from taskforce.core.lifecycle import SlotState
from taskforce.core.model import SpecError, TaskSpec, build, settings_of, start_order
from taskforce.core.requests import refresh_spec
from taskforce.core.slots import ReloadNote, TaskState

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

S = SlotState


def _differ(old: Any, new: Any) -> bool:
    """Whether two specs or config entries differ.  An unchanged task of a
    config read piece by piece has the very same ones (``is``): no need to
    compare them field by field, ten thousand times per reload."""
    return old is not new and bool(old != new)


class Reconcile(Convergence):
    """Config events, and applying a config's specs."""

    def _on_ConfigLoaded(self, event: ev.ConfigLoaded) -> None:
        roles = tuple(event.roles) if event.roles is not None else None
        role_values = event.role_values
        first = not self.tasks and not self.config
        if event.roles_missing is not None or first:
            self._touch()
        if event.roles_missing is not None:
            # A roles file that vanishes (deleted, or between two writes)
            # must not put the whole fleet config in scope: a db host would
            # start the web tier.  Keep the roles, as for a broken file.
            # Only a start with no roles file named at all runs every task.
            if first:
                self.counters["reload_errors"] += 1
                self.log(
                    "error",
                    f"{event.source}: roles file {event.roles_missing} not found; "
                    "nothing was started",
                )
                return
            roles, role_values = self.roles, self.role_values
            kept = ", ".join(roles) if roles else ("none" if roles == () else "every task in scope")
            self.log(
                "warning",
                f"roles file {event.roles_missing} is missing; keeping the current roles ({kept})",
            )
        try:
            specs = build(event.config, self.facts, roles, role_values)
        except SpecError as exc:
            # The shell validates before sending; this guards replayed logs.
            self._touch()
            self.counters["reload_errors"] += 1
            path = ".".join(str(p) for p in exc.path)
            self.log("error", f"config rejected: {path}: {exc.message}")
            return
        if not first:
            self.counters["reloads"] += 1
        roles_changed = roles != self.roles
        before = {name: task.spec for name, task in self.tasks.items() if not task.removed}
        entries = self.config.get("tasks") or {}
        self.config = dict(event.config)
        self.roles = roles
        self.role_values = dict(role_values)
        settings = self.settings
        self.settings = settings_of(self.config)
        if roles_changed or settings != self.settings or self.leftovers:
            self._touch()  # (what every task's slots do may differ)
        self._apply_specs(
            specs, roles_changed=roles_changed and not first, source=event.source, entries=entries
        )
        if not first:
            self._reload = ReloadNote(
                event.source,
                changed=sorted(n for n in specs if n in before and _differ(before[n], specs[n])),
                added=sorted(n for n in specs if n not in before),
                removed=sorted(n for n in before if n not in specs),
            )

    def in_force(self, config: Any) -> bool:
        """Whether ``config`` is the config in force.  Right after a
        ``ConfigLoaded``: whether the core took it (the shell lets the
        sockets it bound for it listen only then)."""
        return bool(self.config == config)

    def _on_ConfigRejected(self, event: ev.ConfigRejected) -> None:
        self._reject(event.source, event.errors or (event.error,))

    def _reject(self, source: str, errors: tuple[str, ...]) -> None:
        """Files that did not load (for ``source``): counted and logged;
        nothing that runs changes."""
        self.counters["reload_errors"] += 1
        if len(errors) == 1:
            self.log("error", f"{source}: {errors[0]}; nothing was changed")
            return
        # Every problem, one line each (as -C prints them), so one edit
        # fixes them all; then what became of it.
        for error in errors:
            self.log("error", f"{source}: {error}")
        self.log("error", f"{source}: {len(errors)} errors; nothing was changed")

    def _apply_specs(
        self,
        specs: dict[str, TaskSpec],
        *,
        roles_changed: bool,
        source: str,
        entries: Any = None,
    ) -> None:
        """Apply a config's specs; ``entries``: the tasks of the config before."""
        entries = entries if entries is not None else {}
        new_entries = self.config.get("tasks") or {}
        for name in sorted(set(self.tasks) - set(specs)):
            task = self.tasks[name]
            if not task.removed:
                task.removed = True
                self._touch(name)
                self.log("info", f"{name}: removed from the config; stopping", name)
        for name, spec in specs.items():
            existing = self.tasks.get(name)
            if existing is None:
                fresh = self.tasks[name] = TaskState(spec=spec)
                fresh.run_requested = spec.control == "once"
                self._touch(name)
                continue
            task = existing
            old = task.spec
            task.spec = spec
            task.rollout_check = spec is not old  # (a process may be outdated now)
            own_change = task.removed or _differ(entries.get(name), new_entries.get(name))
            overridden = task.control_override is not None or task.count_override is not None
            if spec is not old or own_change or overridden:
                # The converge pass visits it (and what requires it); a task
                # whose spec and entry are the very same has nothing to do.
                self._touch(name)
            task.removed = False
            if overridden:
                self._keep_overrides(task, source=source, own_change=own_change)
            if own_change:
                for slot in task.slots:
                    if slot.state is S.FAILED:
                        self._retry(slot, "its config entry changed")
                self.resume(task, "its config entry changed")
            if spec.in_scope != old.in_scope:
                why = "roles changed" if roles_changed else "config changed"
                where = "in scope" if spec.in_scope else "out of scope"
                self.log("info", f"{name}: now {where} ({why})", name)
                if spec.in_scope:
                    task.run_requested = spec.control == "once"
            if spec.control != old.control:
                task.run_requested = spec.control == "once"
        order = start_order({n: t.spec for n, t in self.tasks.items() if not t.removed})
        # Removed tasks still drain; keep them after everything else.
        self._set_order(order + sorted(n for n, t in self.tasks.items() if t.removed))
        self.update_watches()
        if self.leftovers:
            self._settle_leftovers()

    def _keep_overrides(self, task: TaskState, *, source: str, own_change: bool) -> None:
        """After a config event: keep the operator's overrides of ``task``, or
        drop them when a reload was asked for over the control path (the
        original's "revert to the config") or the task's own entry changed.

        An operator's stop must not be undone by someone editing another
        task, or a comment: it lasts until the operator, or the task's own
        config, says otherwise.  The log says which, and why.
        """
        made = self.describe_overrides(task)
        if not made:
            return
        name = task.spec.name
        if source == "request" or own_change:
            why = "a reload was asked for" if source == "request" else "its config entry changed"
            task.control_override = task.count_override = None
            task.control_override_at = task.count_override_at = None
            self.log("info", f"{name}: operator override {made} dropped: {why}", name)
            return
        # The spec was built from the config alone: build in the overrides.
        refresh_spec(self, task)
        self.log(
            "info",
            f"{name}: operator override {made} kept: its config entry did not change "
            "(undo: start it, set it back, or ask for a reload)",
            name,
        )

    def describe_overrides(self, task: TaskState) -> str:
        """The overrides in force on ``task``, and since when, for the log."""
        parts = []
        for key, value, at in task.overrides():
            since = "" if at is None else f", set {max(0.0, self.now - at):.0f}s ago"
            parts.append(f"{key}={value} (config: {getattr(task.spec, key)}{since})")
        return ", ".join(parts)
