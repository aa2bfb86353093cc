"""The shell: one event loop that turns OS happenings into events for the core
and performs the effects the core returns.

It sleeps in a single blocking ``select`` when nothing is due: signals reach
it through a wake-up pipe, timers through the select timeout.  It holds no
policy -- what to start, stop or restart is always the core's answer -- and
it must never let an OS failure escape as an exception through the core:
failures become events (``SpawnFailed``) or log lines.  The processes it
starts and reaps are its ``Children`` part (``taskforce.children``).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import selectors
import signal
import sys
import time
from collections import deque
from collections.abc import Callable

from taskforce import heap, loader, output, pidwatch, process, signals, tracking
from taskforce.children import Children
from taskforce.config import (
    ConfigError,
    Roles,
    RolesFileMissing,
    host_names,
    line_of,
    load_config,
    load_roles,
)
from taskforce.control.options import Options  # --- control server
from taskforce.core import effects as fx
from taskforce.core import events as ev
from taskforce.core.sockets import socket_specs
from taskforce.core.supervisor import Supervisor
from taskforce.notify import NotifySockets  # --- readiness
from taskforce.probes import Probes  # --- readiness
from taskforce.redact import LogSecrets
from taskforce.sockets import SocketError, Sockets
from taskforce.watch import Watcher, make_watcher

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger("taskforce")

_LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

#: While a process group drains after its leader died, how often to look at
#: it when no SIGCHLD can tell us (members that are not our descendants).
DRAIN_POLL = 0.1
#: The longest single wait (a day): select() refuses timeouts near 2**31 ms.
MAX_WAIT = 86400.0


class Daemon(Children):
    """Runs the core against the real host until it asks to exit."""

    def __init__(
        self,
        config_path: str,
        roles_path: str | None,
        *,
        expires: float | None = None,
        recorder: Callable[[ev.Event, tuple[fx.Effect, ...]], None] | None = None,
        watcher: Watcher | None = None,
        server: Options | None = None,
        sockets: Sockets | None = None,
    ) -> None:
        self.config_path = config_path
        self.roles_path = roles_path
        self.core = Supervisor()
        self.selector = selectors.DefaultSelector()
        self.recorder = recorder
        self.expires_at = time.monotonic() + expires if expires is not None else None
        self.timer_at: float | None = None
        self.exit_effect: fx.Exit | None = None
        #: The signal dispositions of ``signals.TABLE``, and what arrived.
        self.signals = signals.Signals()
        #: the processes the core spawned, by pid: the slot each leads
        self.leaders: dict[int, tracking.Slot] = {}
        #: commands run by ``RunCommand`` that have not ended: (task, name,
        #: instance, run) by pid (each leads its own process group)
        self.commands: dict[int, tuple[str, str, int, int]] = {}
        self.exec_reports: dict[int, int] = {}
        self.exec_errors: dict[int, str] = {}
        #: daemons named by a pidfile (not our children), by pid: their slot
        self.daemons: dict[int, tracking.Slot] = {}
        #: slots whose leader is gone while the rest of them drains, by leader pid
        self.draining: dict[int, tracking.Slot] = {}
        #: what an earlier taskforce left (see ``LeftoversFound``), by slot
        self.leftovers: dict[tracking.Slot, set[int]] = {}
        self.watcher = watcher if watcher is not None else make_watcher()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, self._on_wake)
        self.watcher.attach(self.selector)
        # --- nowait/adopt: daemons found through pidfiles
        self.pidwatch = pidwatch.ProcessWatch(self._watched_exit)
        self.pidwatch.attach(self.selector)
        # --- which processes belong to which slot: cgroups, or a marker
        self.tracker = tracking.Tracker(
            tracking.instance_id(config_path, roles_path), self._slot_emptied
        )
        self.tracker.attach(self.selector)
        self.tracker.known_children = lambda: set(self.leaders) | set(self.commands)
        self.leftover_watch = pidwatch.ProcessWatch(self._leftover_exit)
        self.leftover_watch.attach(self.selector)
        #: config and roles files read on a worker thread when they change
        self.loads = loader.BackgroundLoad(self.load_inputs, self.wake)
        self.subreaper = False
        # --- control server
        #: The control server (status and control over HTTP), on this
        #: selector; it sees this daemon as a ``taskforce.control.shell.Shell``.
        self.server = LazyServer(self, server)
        #: how many events the core has been fed (the server's answers
        #: computed from the core hold while it stays the same)
        self.fed = 0
        #: secret values hidden from every log line
        self.log_secrets = LogSecrets()
        self.log_secrets.install()
        #: Task output pipes, read on this selector (see taskforce.output).
        self.output = output.Output(self.selector)
        # --- readiness: the notify sockets (sd_notify) and readiness probes
        self.notify = NotifySockets(
            self.tracker.ident, self.selector, self._notify_sender, self._notified
        )
        self.probes = Probes(self.selector, self.wake)
        # --- sockets held for tasks (bound before the core sees a config,
        # listening once it has taken it)
        self.sockets = sockets if sockets is not None else Sockets.inherited()

    # ------------------------------------------------------------ start-up

    def _install_signals(self) -> None:
        consumed = self.signals.install(self._wake_w)
        if consumed:
            log.info("a reset asked for during the re-exec was part of it; not resetting again")

    def boot_events(self) -> list[ev.Event]:
        """The first events: who we are, then the config (or an error)."""
        now = time.monotonic()
        host, fqdn = host_names()
        booted = ev.Booted(
            at=now,
            environ=dict(os.environ),
            host=host,
            fqdn=fqdn,
            pid=os.getpid(),
            ppid=os.getppid(),
        )
        loaded = self._bind_sockets(self.load_inputs("start"))  # --- sockets
        return [booted, *self.find_leftovers(), loaded]

    def find_leftovers(self) -> list[ev.Event]:
        """What an earlier taskforce with this config left running (after a
        crash, or an adopted daemon after a reset), watched from now on."""
        found = self.tracker.sweep()
        for slot, pids in found.items():
            self._hold_leftover(slot, pids)
        if not found:
            return []
        leftovers = tuple((task, instance, tuple(pids)) for (task, instance), pids in found.items())
        return [ev.LeftoversFound(at=time.monotonic(), leftovers=leftovers)]

    def load_inputs(self, source: str) -> ev.Event:
        """Read the roles and config files; ConfigLoaded or ConfigRejected.

        A roles file that is not there is reported as such (``roles_missing``)
        for the core to decide on; the config is then checked against the
        roles the core has.
        """
        missing = None
        try:
            try:
                roles = load_roles(self.roles_path)
            except RolesFileMissing as exc:
                missing = exc.file
                roles = Roles(self.core.roles, dict(self.core.role_values))
            config = load_config(self.config_path, roles=roles.names, role_values=roles.values)
        except ConfigError as exc:
            errors = tuple(exc.report())
            return ev.ConfigRejected(
                at=time.monotonic(),
                source=source,
                error=errors[0],
                errors=errors if len(errors) > 1 else (),
            )
        except OSError as exc:
            where = exc.filename or self.config_path
            error = f"{where}: {exc.strerror or exc}"
            return ev.ConfigRejected(at=time.monotonic(), source=source, error=error)
        if missing is not None:
            return ev.ConfigLoaded(
                at=time.monotonic(), config=config, source=source, roles_missing=missing
            )
        return ev.ConfigLoaded(
            at=time.monotonic(),
            config=config,
            roles=roles.names,
            role_values=dict(roles.values),
            source=source,
        )

    # ---------------------------------------------------------------- loop

    def run(self) -> fx.Exit:
        """Supervise until the core says every task has stopped."""
        self.subreaper = self.tracker.subreaper = process.become_subreaper()
        log.info("keeping track of every task's processes with %s", self.tracker.how)
        self._install_signals()
        self._watch_inputs()
        self.notify.start()  # --- readiness
        try:
            for event in self.boot_events():
                self.feed(event)
            # What exists now (modules, the config) lives as long as we do:
            # keep it out of the collector's way, so collections stay short.
            # (The collector was off for the start-up: see cli.serve.)
            gc.freeze()
            gc.enable()
            while self.exit_effect is None:
                self._wait_and_dispatch()
        except BaseException:
            log.exception("taskforce failed; stopping every task it started")
            self.emergency_stop()
            raise
        finally:
            if self.exit_effect is not None and self.exit_effect.reset:
                # Until the next taskforce has its handlers, a signal must
                # wait for it rather than end it (see taskforce.signals).
                self.signals.hold()
            self.server.close()  # --- control server: flush replies, remove sockets
            self.output.close()
            # --- readiness: a reset's successor binds the same notify paths
            self.probes.close()
            self.notify.close(keep=self.exit_effect is not None and self.exit_effect.reset)
            self.watcher.close()
            self.tracker.close()
            signal.set_wakeup_fd(-1)
            # --- sockets: through a reset's exec they stay open; else closed
            if self.exit_effect is not None and self.exit_effect.reset:
                self.sockets.pass_on()
            else:
                self.sockets.close()
        return self.exit_effect

    def _timeout(self) -> float | None:
        if self.output.busy:
            return 0.0  # output lines wait to be written; come straight back
        deadlines = [at for at in (self.timer_at, self.expires_at) if at is not None]
        if self.draining and not self.subreaper and not self.tracker.cgroups:
            deadlines.append(time.monotonic() + DRAIN_POLL)
        watch_due = self.watcher.next_deadline()
        if watch_due is not None:
            deadlines.append(watch_due)
        pid_due = self.pidwatch.next_deadline()
        if pid_due is not None:
            deadlines.append(pid_due)
        probe_due = self.probes.next_deadline()  # --- readiness
        if probe_due is not None:
            deadlines.append(probe_due)
        server_due = self.server.next_deadline()  # --- control server
        if server_due is not None:
            deadlines.append(server_due)
        if not deadlines:
            return None
        # A deadline weeks away (a long time_limit) is beyond what the wait
        # call accepts; waking once a day until then costs nothing.
        return min(MAX_WAIT, max(0.0, min(deadlines) - time.monotonic()))

    def _wait_and_dispatch(self) -> None:
        self.server.tick(time.monotonic())  # --- control server: answer queued requests
        try:
            ready = self.selector.select(self._timeout())
        except InterruptedError:
            ready = []
        for selected, _ in ready:
            selected.data()
        self.output.pump()
        self._handle_signals()
        now = time.monotonic()
        if self.draining:
            self._check_draining()
        if self.expires_at is not None and now >= self.expires_at:
            self.expires_at = None
            self.feed(ev.StopRequested(at=now, reason="--expires reached"))
        self.pidwatch.poll(time.monotonic())
        for key, path in self.watcher.take_changes(time.monotonic()):
            # Taskforce's own inputs too: the core answers with LoadInputs
            # or CheckReset.
            self.feed(ev.FileChanged(time.monotonic(), key, path))
        for finished in self.probes.take():  # --- readiness
            self.feed(finished)
        loaded = self.loads.take()
        if loaded is not None:
            self.apply_loaded(loaded)
        if self.timer_at is not None and time.monotonic() >= self.timer_at:
            self.timer_at = None
            self.feed(ev.TimerFired(at=time.monotonic()))

    def wake(self) -> None:
        """Make the loop take a turn now (safe from any thread)."""
        try:
            os.write(self._wake_w, b"\0")
        except OSError:
            pass  # full: a turn is due anyway; closed: the loop is gone

    def _on_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _handle_signals(self) -> None:
        reap = False
        for signum, action in self.signals.take():
            name = signals.name(signum)
            if action is signals.Action.REAP:
                reap = True
            elif action is signals.Action.STOP:
                self.feed(ev.StopRequested(at=time.monotonic(), reason=f"got {name}"))
            elif action is signals.Action.RESET:
                self.request_reset(f"got {name}")
            elif action is signals.Action.REOPEN:
                log.info("got %s: reopening output files", name)
                self.output.reopen()
        if reap:
            self._reap()

    # ------------------------------------------------------------- inputs

    def _watch_inputs(self) -> None:
        """The config and roles files are watched like any task's file, and
        so is taskforce's own code; the core says what a change of each
        means (``LoadInputs``, ``CheckReset``)."""
        self.watcher.watch(fx.Watch(ev.CONFIG_KEY, "file", (self.config_path,)))
        if self.roles_path:
            self.watcher.watch(fx.Watch(ev.ROLES_KEY, "file", (self.roles_path,)))
        self.watcher.watch(fx.Watch(ev.CODE_KEY, "file", own_code_files()))

    def request_reset(self, reason: str) -> bool:
        """Ask for a reset; True if one is under way after it.

        The core decides: it joins a reset under way, or asks (``CheckReset``)
        what loading the config and roles files finds now -- the re-executed
        taskforce starts from them -- and goes ahead or refuses.
        """
        self.feed(ev.ResetAsked(time.monotonic(), reason))
        return self.core.shutdown is not None

    def _reset_facts(self, reason: str) -> ev.ResetRequested:
        """A reset asked for, with what loading the files on disk finds now."""
        loaded = self.load_inputs("reset")
        errors: tuple[str, ...] = ()
        roles_missing = None
        if isinstance(loaded, ev.ConfigRejected):
            errors = loaded.errors or (loaded.error,)
        elif isinstance(loaded, ev.ConfigLoaded):
            roles_missing = loaded.roles_missing
        return ev.ResetRequested(
            time.monotonic(), reason=reason, errors=errors, roles_missing=roles_missing
        )

    def reload(self, source: str = "request") -> ev.Event:
        """Re-read config and roles; the core applies or ignores the result."""
        return self.apply_loaded(self.load_inputs(source))

    def apply_loaded(self, loaded: ev.Event) -> ev.Event:
        """Feed what ``load_inputs`` read (maybe on another thread), stamped
        now, as it reaches the core in its order."""
        event = self._bind_sockets(dataclasses.replace(loaded, at=time.monotonic()))
        self.feed(event)
        return event

    # ------------------------------------------------------------- effects

    @property
    def now(self) -> float:
        """The monotonic clock that stamps events (for the control server)."""
        return time.monotonic()

    def captured(self, task: str) -> output.Recent | None:
        """``task``'s recent output lines, if any were captured."""
        return self.output.recent.get(task)

    def feed(self, event: ev.Event) -> tuple[fx.Reply, ...]:
        """Hand ``event`` to the core and perform its effects; the replies
        the core gave for ``event`` itself (to a control request).

        Results of a ``Spawn`` are fed back before anything else, as the core
        requires.  Each effect is let go of once performed: a start-up's
        ten thousand spawns, held until the last one ran, left their memory
        as holes among what lives on (2 MiB at 10,000 tasks).
        """
        queue: deque[ev.Event] = deque([event])
        replies: tuple[fx.Reply, ...] | None = None
        while queue:
            current = queue.popleft()
            if isinstance(current, (ev.ConfigLoaded, ev.Booted)):
                self._learn_secrets(current)
            effects = self.core.handle(current)
            self.fed += 1
            if isinstance(current, ev.ConfigLoaded):
                # Before any effect: a spawn may need a socket the config
                # brought, and a refused config must take its own away.
                self._settle_sockets(current)
            if replies is None:
                replies = tuple(e for e in effects if isinstance(e, fx.Reply))
            if self.recorder is not None:
                self.recorder(current, effects)
            pending = deque(effects)
            del effects
            while pending:
                effect = pending.popleft()
                if isinstance(effect, fx.Spawn):
                    self.log_secrets.environment(effect.env)
                result = self.perform(effect)
                if result is not None:
                    queue.append(result)
        if isinstance(event, ev.ConfigLoaded):
            # A config applied (the start-up's spawns, a reload) leaves a
            # burst of freed memory behind: give its pages back.
            heap.trim()
        return replies or ()

    def _bind_sockets(self, event: ev.Event) -> ev.Event:
        """Bind the new sockets a ``ConfigLoaded``'s config asks for before
        the core sees it; a socket that cannot be bound rejects the config,
        as a bad value would (nothing that runs changes).  They listen only
        once the core has taken the config (``_settle_sockets``)."""
        if not isinstance(event, ev.ConfigLoaded):
            return event
        try:
            self.sockets.bind(socket_specs(event.config))
        except SocketError as exc:
            text = str(exc)
            key = text.partition(":")[0]
            line = line_of(getattr(event.config, "lines", {}), tuple(key.split(".")))
            where = self.config_path if line is None else f"{self.config_path}:{line}"
            return ev.ConfigRejected(event.at, source=event.source, error=f"{where}: {text}")
        return event

    def _settle_sockets(self, event: ev.ConfigLoaded) -> None:
        """After the core has judged ``event``: hold its config's sockets if
        the core took it, else close the ones bound for it (nothing ever
        listened on them) and keep what is held."""
        if not self.core.in_force(event.config):
            self.sockets.release()
            return
        try:
            said = self.sockets.commit(socket_specs(event.config))
        except SocketError as exc:
            said = exc.said
            log.error("%s: %s", self.config_path, exc)
        for line in said:
            log.info("%s", line)

    def _learn_secrets(self, event: ev.ConfigLoaded | ev.Booted) -> None:
        """What the log must not show (see ``taskforce.redact``)."""
        if isinstance(event, ev.ConfigLoaded):
            self.log_secrets.config(event.config)
        else:
            self.log_secrets.environment(event.environ)

    def perform(self, effect: fx.Effect) -> ev.Event | None:
        if isinstance(effect, fx.Spawn):
            return self._spawn(effect)
        if isinstance(effect, fx.Signal):
            if effect.group:
                slot = (effect.task, effect.instance)
                self.tracker.signal(slot, effect.pid, effect.signal, frozenset(self.commands))
            else:
                process.send_signal(effect.pid, effect.signal, group=False)
        elif isinstance(effect, fx.ArmTimer):
            self.timer_at = effect.at
        elif isinstance(effect, fx.Log):
            prefix = ""
            log.log(_LOG_LEVELS.get(effect.level, logging.INFO), "%s%s", prefix, effect.message)
        elif isinstance(effect, fx.RunCommand):
            return self._run_command(effect)
        elif isinstance(effect, fx.StopCommand):
            self._stop_command(effect)
        elif isinstance(effect, fx.Watch):
            self.watcher.watch(effect)
        elif isinstance(effect, fx.Unwatch):
            self.watcher.unwatch(effect.key)
        elif isinstance(effect, fx.StopLeftover):
            return self._stop_leftover(effect)
        elif isinstance(effect, fx.SweepSlot):
            return self._sweep_slot(effect)
        elif isinstance(effect, fx.ReadPidfile):
            # Facts only: whether the pid is accepted is the core's call.
            slot = (effect.task, effect.instance)
            facts = pidwatch.read_pidfile(effect.path, lambda pid: self.tracker.holds(slot, pid))
            return ev.PidfileRead(
                time.monotonic(), effect.task, effect.instance, effect.generation, **facts
            )
        elif isinstance(effect, fx.WatchProcess):
            self._watch_process(effect.task, effect.instance, effect.pid)
        elif isinstance(effect, fx.LoadInputs):
            self.loads.request(effect.source)  # read on a worker; fed when done
        elif isinstance(effect, fx.CheckReset):
            return self._reset_facts(effect.reason)
        elif isinstance(effect, fx.Probe):
            return self.probes.start(effect)  # --- readiness: None while under way
        elif isinstance(effect, fx.Reply):
            pass  # --- control server: it finds the reply among what ``feed`` returns
        elif isinstance(effect, fx.Exit):
            self.exit_effect = effect
        return None


class LazyServer:
    """Stands in for the control server until a listener is configured
    (``-w`` or ``settings.http``): only then are HTTP and TLS loaded."""

    def __init__(self, daemon: Daemon, options: Options | None) -> None:
        self.daemon = daemon
        self.options = options or Options()
        self.instance: Any = None

    def _wanted(self) -> bool:
        if self.instance is None and (
            self.options.listen is not None
            or (self.daemon.core.config.get("settings") or {}).get("http")
        ):
            from taskforce.control.server import ControlServer

            self.instance = ControlServer(
                self.daemon, self.daemon.selector, self.options, sample_off_loop=True
            )
        return self.instance is not None

    def next_deadline(self) -> float | None:
        return self.instance.next_deadline() if self._wanted() else None

    def tick(self, now: float) -> None:
        if self._wanted():
            self.instance.tick(now)

    def close(self) -> None:
        if self.instance is not None:
            self.instance.close()


def own_code_files() -> tuple[str, ...]:
    """Every Python file of the taskforce package as it is installed."""
    root = os.path.dirname(os.path.abspath(__file__))
    found: list[str] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        found.extend(os.path.join(folder, name) for name in sorted(files) if name.endswith(".py"))
    return tuple(found)


def reexec() -> None:
    """Replace this process with a fresh taskforce, same arguments."""
    os.environ["TASKFORCE_REEXEC"] = "1"
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    os.execv(sys.executable, [sys.executable, *argv[1:]])
