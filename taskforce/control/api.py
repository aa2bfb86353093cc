"""The control server's endpoints: a request in, a ``Response`` out.

Paths, parameters, codes and texts follow the original taskforce's HTTP
service, so its clients keep working:

- ``/status/version``, ``/status/config``, ``/status/tasks`` (JSON; ``fmt``
  must be json, ``indent=N`` pretty-prints) are always allowed, as are the
  new ``/status/health`` (200 when every wanted process runs, else 503),
  ``/status/logs`` (a task's recent output lines, never cached),
  ``/status/access`` (what the asker may do) and ``/metrics``
  (Prometheus text);
- ``/status/events`` and ``/status/logs/follow`` answer with a stream that
  stays open (``taskforce.control.stream``), with status permission;
- ``/`` and ``/page/...`` are the status page's files
  (``taskforce.control.site``), the same for everyone;
- ``/manage/...`` needs ``allow_control`` (403 ``Control not permitted on
  this path``), and from a browser the status page's header (see
  ``site.forged``): the original's ``control``, ``count``, ``reload``, ``stop``,
  ``reset``, and new ``start``, ``restart``, ``signal``, ``event`` and
  ``plan``;
- parameters come from the query merged with a form body, the query winning,
  and only the first value of each counts;
- an unknown path is a 404 naming it.

Requests that change something go to the core as ``ControlRequested``
events; the core's ``Reply`` is the answer (the ``/manage/...`` endpoints
are in ``taskforce.control.manage``, the parsing of parameters in
``taskforce.control.params``; this module checks who may ask and answers
the ``/status/...`` paths).  Nothing here decides about
tasks.
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from taskforce import __version__, costs
from taskforce.control import site
from taskforce.control.http import JSON, Deferred, Request, Response, text
from taskforce.control.listen import Listener, Service
from taskforce.control.manage import MANAGE as MANAGE
from taskforce.control.params import Params, ParseError, first, request_params
from taskforce.control.stream import Follow, StreamRequest
from taskforce.core import access, secrets, status
from taskforce.core.requests import split_slot
from taskforce.output import Recent

if TYPE_CHECKING:
    from taskforce.control.server import ControlServer

log = logging.getLogger("taskforce")
Who = dict[str, Any]
METRICS = "text/plain; version=0.0.4; charset=utf-8"


class AwaitSample:
    """The answer needs a fresh sample of the slots' costs, being taken off
    the loop: the server holds the request and asks again once it is in."""


AWAIT_SAMPLE = AwaitSample()


def handle(
    server: ControlServer, request: Request, listener: Listener, who: Who
) -> Response | Deferred | AwaitSample | StreamRequest:
    """Answer one complete request from a client that proved ``who``
    (``/manage/plan``: with a ``Deferred``)."""
    if request.method not in ("GET", "POST", "HEAD"):
        return text(
            405,
            f"method {request.method} not allowed; use GET or POST\n",
            headers=[("Allow", "GET, HEAD, POST")],
        )
    service = listener.service
    if not listener.host_ok(request.headers.get("host")):
        # DNS rebinding: a name that is not ours, pointing at our address.
        server.refuse("host")
        return text(421, f"Host {request.headers['host'][:200]!r} is not a name of this server\n")
    # Only a listener with a token judges one: tfctl may send the token of
    # $TASKFORCE_TOKEN_FILE to every listener.
    if listener.token is not None:
        token = listener.token_ok(request.headers.get("authorization"))
        if token is False:
            server.refuse("bad_token")
            log.warning("control: wrong token from %s", access.describe(who))
            return _unauthorized("wrong token")
        if token:
            who = {**who, "token": True}
    request.who = who
    path = request.path
    page = site.PAGE.get(path)
    if page is not None:
        # The page's own files: the same for everyone, no data in them.
        return page()
    reader = STATUS.get(path)
    if reader is not None:
        if not access.grants(listener.status_grants, who):
            return _denied(server, listener, who, "status")
        try:
            params = request_params(request)
        except ParseError as exc:
            return text(400, f"Parse error -- {exc}\n")
        if path in STREAMS:
            why = site.cross_site(request)
            if why is not None:
                server.refuse("cross_site")
                return text(403, f"refused: {why}\n")
            return STREAMS[path](server, request, params)
        if path == "/status/access":
            return _access(server, listener, who)
        return _status(server, path, reader, params, service)
    if path.startswith("/manage/"):
        if not service.allow_control:
            server.refuse("control_off")
            return text(403, "Control not permitted on this path\n")
        why = site.forged(request)
        if why is not None:
            server.refuse("cross_site")
            log.warning("control: %s refused to %s: %s", path, access.describe(who), why)
            return text(403, f"refused: {why}\n")
        action = MANAGE.get(path)
        if action is None:
            return text(404, f"Unknown control path -- {request.target}\n")
        if not access.grants(listener.control_grants, who):
            # Refused before its parameters are read; the core says so, so
            # that the refusal is recorded and logged with who asked.
            reply = server.control(path.rpartition("/")[2], {}, who, listener.control_grants)
            if reply is not None and reply.code == 403:
                return _denied(server, listener, who, "control", str(reply.body))
        try:
            params = request_params(request)
        except ParseError as exc:
            return text(400, f"Parse error -- {exc}\n")
        return action(server, request, params)
    return text(404, f"{request.target} not found")


def _credentialed(who: Who) -> bool:
    return bool(who.get("token") or who.get("subject") or "uid" in who)


def _unauthorized(why: str) -> Response:
    return text(
        401,
        f"{why}: send Authorization: Bearer TOKEN or a client certificate\n",
        headers=[("WWW-Authenticate", 'Bearer realm="taskforce"')],
    )


def _denied(
    server: ControlServer, listener: Listener, who: Who, what: str, body: str | None = None
) -> Response:
    """401 to a TCP client that proved nothing, else 403."""
    if not listener.service.is_unix and not _credentialed(who):
        server.refuse("no_credentials")
        return _unauthorized(f"{what} needs a credential")
    server.refuse("not_allowed")
    if what == "status":
        log.warning("control: status refused to %s", access.describe(who))
    return text(403, body or f"not allowed: {access.describe(who)} may not read {what}\n")


# ----------------------------------------------------------------- status


def _status(
    server: ControlServer,
    path: str,
    reader: Callable[[ControlServer, Service], tuple[int, Any]],
    params: Params,
    service: Service,
) -> Response | AwaitSample:
    if path == "/metrics":
        turn_key = (path, service.allow_control)
        if turn_key not in server.turn_cache:
            figures = _costs(server)
            if figures is None:
                return AWAIT_SAMPLE
            body = (
                status.metrics_text(server.shell.core, server.figures())
                + _refused(server)
                + costs.metrics_text(figures)
            )
            server.turn_cache[turn_key] = Response(200, body.encode(), METRICS)
        return server.turn_cache[turn_key]
    fmt = (first(params, "fmt") or "json").lower()
    if fmt != "json":
        return text(415, f'Invalid fmt request "{fmt}", supported formats are: json\n')
    indent_text = first(params, "indent")
    indent = None
    if indent_text:
        digits = indent_text.strip()
        if not (digits.isascii() and digits.isdigit()) or len(digits) > 2 or int(digits) > 16:
            return text(400, f"bad indent {indent_text!r}: expected a whole number up to 16\n")
        indent = int(digits)
    if path == "/status/logs":
        return _logs(server, params, indent)
    key: Any = (path, indent, service.allow_control)
    cache = server.cached()
    if path == "/status/tasks":
        # The costs change without the core being fed: an answer holds as
        # long as their sample does.
        if _costs(server) is None:
            return AWAIT_SAMPLE
        generation = server.costs.generation
        key = (*key, generation)
        for old in [k for k in cache if k[0] == path and k[-1] != generation]:
            del cache[old]
    cached = cache.get(key)
    if cached is None:
        code, data = reader(server, service)
        separators = (",", ":") if indent is None else None
        body = json.dumps(data, indent=indent, separators=separators, default=_jsonable) + "\n"
        cached = cache[key] = Response(code, body.encode(), JSON)
    return cached


def _refused(server: ControlServer) -> str:
    """``taskforce_http_refused_total`` by reason: requests refused for who
    asked (``host``, ``bad_token``, ``no_credentials``, ``not_allowed``,
    ``control_off``, ``cross_site``)."""
    name = "taskforce_http_refused_total"
    lines = [
        f"# HELP {name} Requests refused for who asked, by reason.",
        f"# TYPE {name} counter",
    ]
    for reason in (
        "bad_token",
        "control_off",
        "cross_site",
        "host",
        "no_credentials",
        "not_allowed",
    ):
        lines.append(f'{name}{{reason="{reason}"}} {server.refused.get(reason, 0)}')
    return "\n".join(lines) + "\n"


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return str(value)


_PLATFORM: dict[str, Any] = {}


def _version(server: ControlServer, service: Service) -> tuple[int, Any]:
    import platform  # the first /version asked loads it; most daemons never are

    if not _PLATFORM:
        uname = platform.uname()
        _PLATFORM.update(system=uname.system, platform=platform.platform(), release=uname.release)
    info: dict[str, Any] = {"system": _PLATFORM["system"]}
    if service.allow_control:
        info.update(platform=_PLATFORM["platform"], release=_PLATFORM["release"])
    return 200, {"taskforce": __version__, "python": platform.python_version(), "platform": info}


def _config(server: ControlServer, service: Service) -> tuple[int, Any]:
    return 200, secrets.redact_config(server.shell.core.config)


@functools.lru_cache(maxsize=16384)
def _iso(wall_ms: int) -> str:
    # Cached: a slot's start time is shown on every status request.
    moment = datetime.datetime.fromtimestamp(wall_ms / 1000).astimezone()
    return moment.isoformat(timespec="milliseconds")


_OFFSET = [0.0]


def _offset(now_mono: float, now_wall: float) -> float:
    """Wall clock minus monotonic clock, kept steady between requests.

    Read afresh each time it would jitter in the last digit shown; it is
    only replaced when the wall clock really moved (NTP step, manual set).
    """
    offset = now_wall - now_mono
    if abs(offset - _OFFSET[0]) > 0.01:
        _OFFSET[0] = offset
    return _OFFSET[0]


def wall_clock(tasks: dict[str, Any], now_mono: float, now_wall: float) -> dict[str, Any]:
    """Turn the core's monotonic times into the original's wall-clock fields."""
    offset = _offset(now_mono, now_wall)
    for task in tasks.values():
        since = task.pop("overrides_at", None)
        if since:
            # When each operator override was made: wall seconds and ISO.
            walls = {key: round((at + offset) * 1000) for key, at in since.items()}
            task["overrides_t"] = {key: wall / 1000 for key, wall in walls.items()}
            task["overrides_since"] = {key: _iso(wall) for key, wall in walls.items()}
        rollout = task.get("rollout")
        if rollout and rollout.get("started_at") is not None:
            wall_ms = round((rollout.pop("started_at") + offset) * 1000)
            rollout["started_t"] = wall_ms / 1000
            rollout["started"] = _iso(wall_ms)
        for slot in task["processes"]:
            for what in ("started", "exited", "ready"):
                at = slot.pop(f"{what}_at", None)
                if at is not None:
                    wall_ms = round((at + offset) * 1000)
                    slot[f"{what}_t"] = wall_ms / 1000
                    slot[what] = _iso(wall_ms)
            for what in ("retry", "kill"):
                # Absolute, so that a cached answer stays true.
                at = slot.pop(f"{what}_at", None)
                if at is not None:
                    slot[f"{what}_t"] = round(at + offset, 3)
    return tasks


def _costs(server: ControlServer) -> dict[costs.SlotKey, costs.Figures] | None:
    """Every slot's costs, from the sample of the last half second; None
    when a fresh one is needed, which is then begun off the loop (read from
    the kernel only when asked, never on a timer)."""
    wanted = tuple(
        (name, slot.instance, slot.pid)
        for name, task in server.shell.core.tasks.items()
        for slot in task.slots
        if slot.pid is not None
    )
    # A request that waited for a sample is answered with it, even if a
    # slot restarted meanwhile: under churn it would otherwise wait forever.
    figures = server.costs.held(wanted, any_slots=server.sample_came)
    if figures is None:
        if not server.sample_off_loop:
            return server.costs.sample(wanted)
        server.costs.begin(wanted, server.shell.wake)
    return figures


def _tasks(server: ControlServer, service: Service) -> tuple[int, Any]:
    tasks = status.tasks_status(server.shell.core)
    costs.annotate(tasks, server.costs.last())  # (_status saw it held)
    return 200, wall_clock(tasks, server.shell.now, time.time())


def _health(server: ControlServer, service: Service) -> tuple[int, Any]:
    report = status.health(server.shell.core)
    return (200 if report["healthy"] else 503), report


#: Most digits of a number parameter of ``/status/logs``.
_MAX_DIGITS = 18


def _log_target(server: ControlServer, params: Params) -> Follow | Response:
    """The task (and slot, stream, since, lines) a request for its lines
    names, or the answer saying what is wrong with it."""
    name = first(params, "task")
    if not name:
        return text(400, "missing parameter 'task'\n")
    numbers: dict[str, int | None] = {}
    for key in ("instance", "since", "lines"):
        raw = first(params, key)
        digits = (raw or "").strip()
        if not digits:
            numbers[key] = None
        elif digits.isascii() and digits.isdigit() and len(digits) <= _MAX_DIGITS:
            numbers[key] = int(digits)
        else:
            return text(400, f"bad {key} {raw!r}: expected a whole number\n")
    stream = first(params, "stream") or None
    if stream not in (None, "stdout", "stderr"):
        return text(400, f"bad stream {stream!r}: expected stdout or stderr\n")
    tasks = server.shell.core.tasks
    slot = split_slot(name) if name not in tasks else None
    if slot is not None and slot[0] in tasks:  # web[0] or web:0, as everywhere
        if numbers["instance"] not in (None, int(slot[1])):
            return text(400, f"{name}: instance={numbers['instance']} names another slot\n")
        name, numbers["instance"] = slot[0], int(slot[1])
    task = tasks.get(name)
    if task is None:
        return text(404, f"no such task: {name}\n")
    modes = {process.output for process in task.spec.processes}
    if not modes & {"log", "file"}:
        mode = ", ".join(sorted(modes))
        return text(
            409, f"output of {name} is not captured (output: {mode}); only log and file are kept\n"
        )
    return Follow(name, numbers["instance"], numbers["since"], numbers["lines"], stream)


def _logs(server: ControlServer, params: Params, indent: int | None) -> Response:
    """``/status/logs?task=NAME[&instance=N][&since=SEQ][&lines=N][&stream=S]``:
    the task's recent captured lines (see ``taskforce.output.Recent``),
    oldest first, each with its stream, with ``next`` (the sequence number
    to ask ``since`` next time), ``dropped`` (lines from ``since`` on no
    longer kept), ``first`` (the oldest line the ring still keeps) and
    ``files`` (where its processes' output files are, for ``tfctl logs`` to
    read older lines there itself: the daemon never reads them back)."""
    target = _log_target(server, params)
    if isinstance(target, Response):
        return target
    name = target.task
    task = server.shell.core.tasks[name]
    recent = server.shell.captured(name)
    if recent is None:  # nothing captured yet
        recent = Recent(name)
    lines, dropped = recent.read(target.since, target.instance, target.lines, target.stream)
    files: dict[str, dict[str, Any]] = {}
    for index in range(max(task.spec.count, 1)):
        process = task.spec.process(index)
        if process.output != "file" or target.instance not in (None, index):
            continue
        for kind, path in (("stdout", process.output_file), ("stderr", process.output_stderr)):
            if not path:
                continue
            known = files.get(path)
            if known is not None:  # shared: by several slots, or by both streams
                if known["instance"] != index:
                    known["instance"] = None
                if known["stream"] != kind:
                    known["stream"] = None
                continue
            files[path] = {
                "path": path,
                "instance": index,
                # Both streams go to the file unless stderr has its own.
                "stream": kind if process.output_stderr else None,
                "backups": process.output_backups,
                "timestamps": process.output_timestamps,
            }
    data = {
        "task": name,
        "next": recent.next,
        "first": recent.blocks[0].first if recent.blocks else recent.next,
        "lines": [
            {"seq": seq, "instance": instance, "stream": kind, "time": at, "text": line}
            for seq, instance, kind, at, line in lines
        ],
        "dropped": dropped,
        "files": list(files.values()),
    }
    separators = (",", ":") if indent is None else None
    body = json.dumps(data, indent=indent, separators=separators) + "\n"
    return Response(200, body.encode(), JSON)


# ---------------------------------------------------------------- streams


def tasks_body(server: ControlServer) -> bytes:
    """What ``/status/tasks`` answers now (compact), for the status stream:
    from the same cache as the requests.  A stream never waits for a fresh
    sample of the costs: it shows the latest one and begins a fresh one when
    that is stale (the server sends the stream anew once it is in)."""
    answer = _status(server, "/status/tasks", _tasks, {}, _ANYONE)
    if isinstance(answer, Response):
        return answer.body
    code, data = _tasks(server, _ANYONE)
    return json.dumps(data, separators=(",", ":"), default=_jsonable).encode() + b"\n"


#: Whose answer the status stream shares (``/status/tasks`` shows everyone the same).
_ANYONE = Service("-")


def _follow_tasks(
    server: ControlServer, request: Request, params: Params
) -> Response | StreamRequest:
    if request.method == "HEAD":
        return Response(200, b"", "text/event-stream; charset=utf-8")
    return StreamRequest()


def _follow_logs(
    server: ControlServer, request: Request, params: Params
) -> Response | StreamRequest:
    """``/status/logs/follow``: as ``/status/logs``, then every new line;
    a browser that reconnects resumes from its ``Last-Event-ID``."""
    target = _log_target(server, params)
    if isinstance(target, Response):
        return target
    resume = request.headers.get("last-event-id", "").strip()
    if (
        target.since is None
        and resume.isascii()
        and resume.isdigit()
        and len(resume) <= _MAX_DIGITS
    ):
        target = Follow(target.task, target.instance, int(resume), None)
    if request.method == "HEAD":
        return Response(200, b"", "text/event-stream; charset=utf-8")
    return StreamRequest(target)


STREAMS: dict[str, Callable[[ControlServer, Request, Params], Response | StreamRequest]] = {
    "/status/events": _follow_tasks,
    "/status/logs/follow": _follow_logs,
}


def _access(server: ControlServer, listener: Listener, who: Who) -> Response:
    """``/status/access``: what the asker may do here (the page shows its
    buttons by it; the core still judges every request)."""
    control = listener.service.allow_control and access.grants(listener.control_grants, who)
    data = {"status": True, "control": bool(control), "who": access.describe(who)}
    return Response(200, (json.dumps(data) + "\n").encode(), JSON)


STATUS: dict[str, Callable[[ControlServer, Service], tuple[int, Any]]] = {
    "/status/version": _version,
    "/status/config": _config,
    "/status/tasks": _tasks,
    "/status/health": _health,
    "/status/logs": _health,  # answered in _status; listed so the path is known
    "/metrics": _health,  # answered in _status; listed so the path is known
    # answered in handle; listed so that status permission is checked
    "/status/access": _health,
    "/status/events": _health,
    "/status/logs/follow": _health,
}
