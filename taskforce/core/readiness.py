"""A task's readiness and rollout keys, read into a ``specs.Readiness``.

``ready`` says how a process shows it is ready -- ``notify`` (systemd's
``READY=1``), a probe (``{tcp: PORT}``, ``{http: URL}``, ``{command:
[ARGV...]}``), or nothing (ready once it has run for ``start_delay``);
``ready_interval`` and ``ready_timeout`` pace and bound it; ``watchdog_sec``
asks a notify process for ``WATCHDOG=1``; ``rollout`` says how a change
replaces the task's processes.  The config schema checks what is written
(``config.readiness``); this reads the values once tags are expanded, with
the same rules (``parse_probe_target``).

This module must never do IO.
"""

from __future__ import annotations

from collections.abc import Mapping

from taskforce.core.context import ContextError, expand, expand_all, resolve, resolve_one
from taskforce.core.specs import Readiness, SpecError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PROBE_KINDS = ("tcp", "http", "command")
ROLLOUT_KEYS = ("max_surge", "max_unavailable")
#: seconds between probes, when ``ready_interval`` does not say
DEFAULT_READY_INTERVAL = 1.0
#: seconds a process with ``ready:`` has to become ready, when
#: ``ready_timeout`` does not say (systemd's ``TimeoutStartSec`` is 90 s;
#: a rollout waits this long before it halts, so shorter is kinder)
DEFAULT_READY_TIMEOUT = 30.0


def parse_probe_target(kind: str, value: Any) -> str:
    """A probe's target as the shell takes it: ``HOST:PORT`` for tcp (a
    bare port is on 127.0.0.1), a URL for http; ValueError saying why not."""
    text = str(value).strip()
    if kind == "http":
        if text.startswith("https://"):
            raise ValueError("https probes are not supported; probe the plain http port")
        # (imported here: it brings ipaddress, and few configs probe http)
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(text)
            url_port = parts.port  # (raises on a port that is not one)
        except ValueError:
            parts, url_port = None, None
        if parts is None or parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"expected an http:// URL with a host, got {text!r}")
        if url_port == 0:
            raise ValueError(f"expected a port 1-65535, got {text!r}")
        return text
    host, colon, port = text.rpartition(":")
    if not colon:
        host, port = "127.0.0.1", text
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ValueError(f"expected PORT or HOST:PORT, got {text!r}")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected a port 1-65535, got {port!r}")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _seconds(value: Any, ctx: Mapping[str, str | None], key: str, default: float | None) -> Any:
    raw = resolve_one(value, ctx, default)
    if raw is None:
        return None
    try:
        number = float(expand(raw, ctx) or "") if isinstance(raw, str) else float(raw)
    except (ValueError, ContextError):
        raise SpecError((key,), f"expected a number, got {raw!r}") from None
    if number < 0:
        raise SpecError((key,), f"must be >= 0, got {number:g}")
    return number


def readiness_of(
    task: Mapping[str, Any], ctx: Mapping[str, str | None], *, uses_sockets: bool
) -> Readiness:
    """The ``Readiness`` of a task's config entry (``ctx``: its context)."""
    raw = task.get("ready")  # (a mapping here is a probe, not a conditional)
    if isinstance(raw, str):
        raw = resolve_one(raw, ctx, None)
    kind, target = "delay", ""
    argv: tuple[str, ...] = ()
    if isinstance(raw, str):
        kind = expand(raw, ctx) or ""
        if kind != "notify":
            raise SpecError(("ready",), f"expected notify or a probe, got {kind!r}")
    elif isinstance(raw, Mapping):
        (kind,) = [key for key in raw if key in PROBE_KINDS] or ["?"]
        if kind == "command":
            argv = tuple(expand_all(resolve(raw[kind], ctx), ctx))
            if not argv:
                raise SpecError(("ready", "command"), "the probe command is empty")
        elif kind in PROBE_KINDS:
            value = resolve_one(raw[kind], ctx, None)
            try:
                target = parse_probe_target(
                    kind, expand(value, ctx) if isinstance(value, str) else value
                )
            except ValueError as exc:
                raise SpecError(("ready", kind), str(exc)) from None
        else:
            raise SpecError(("ready",), "a probe has exactly one of " + ", ".join(PROBE_KINDS))
    interval = _seconds(task.get("ready_interval"), ctx, "ready_interval", DEFAULT_READY_INTERVAL)
    if not interval:
        raise SpecError(("ready_interval",), "must be > 0")
    timeout = _seconds(
        task.get("ready_timeout"),
        ctx,
        "ready_timeout",
        None if kind == "delay" else DEFAULT_READY_TIMEOUT,
    )
    watchdog = _seconds(task.get("watchdog_sec"), ctx, "watchdog_sec", None)
    if watchdog is not None and kind != "notify":
        raise SpecError(
            ("watchdog_sec",), "a watchdog needs ready: notify (WATCHDOG=1 comes that way)"
        )
    # One at a time; with sockets taskforce holds, one extra process first,
    # so even ``count: 1`` is never without a ready process.
    surge, unavailable = (1, 0) if uses_sockets else (0, 1)
    rollout = task.get("rollout") or {}  # (a mapping of its keys, not a conditional)
    if isinstance(rollout, Mapping):
        values = []
        for key, default in zip(ROLLOUT_KEYS, (surge, unavailable), strict=True):
            item = resolve_one(rollout.get(key), ctx, default)
            try:
                number = int(expand(item, ctx) or "") if isinstance(item, str) else int(item)
            except (ValueError, TypeError, ContextError):
                raise SpecError(
                    ("rollout", key), f"expected a whole number, got {item!r}"
                ) from None
            if number < 0:
                raise SpecError(("rollout", key), f"must be >= 0, got {number}")
            values.append(number)
        surge, unavailable = values
        if surge == 0 and unavailable == 0:
            raise SpecError(("rollout",), "max_surge and max_unavailable are both 0")
    readiness = Readiness(
        kind=kind,
        target=target,
        argv=argv,
        interval=interval,
        timeout=timeout or None,
        watchdog=watchdog or None,
        max_surge=surge,
        max_unavailable=unavailable,
    )
    # Most tasks say nothing of readiness: they share one (it is frozen).
    return _DEFAULT if readiness == _DEFAULT else readiness


#: the readiness of a task that says nothing of it
_DEFAULT = Readiness()
