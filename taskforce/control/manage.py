"""The control server's ``/manage/...`` endpoints: operator requests to the core.

Each endpoint reads its parameters and hands the request to the core as a
``ControlRequested`` event (``server.control``); the core's ``Reply`` is the
answer.  ``reload`` and ``plan`` read and check files or a posted config on
a worker thread (a ``Deferred``) and feed the result; ``stop`` and ``reset``
report the request as the daemon would.  ``MANAGE`` maps each path to its
endpoint; ``taskforce.control.api`` (which checks who may ask) dispatches
to it.

Nothing here decides about tasks: every judgement -- refusals included --
is the core's.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from taskforce.config import ConfigError, load_config_text, signal_name
from taskforce.control.http import JSON, Deferred, Request, Response, text
from taskforce.control.params import Params, first
from taskforce.core import events as ev
from taskforce.core import status
from taskforce.core.model import SpecError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from taskforce.control.server import ControlServer


def _reply(server: ControlServer, request: Request, action: str, args: dict[str, Any]) -> Response:
    reply = server.control(action, args, request.who, _grants(server, request))
    if reply is None:
        return text(503, "taskforce is exiting\n")
    if isinstance(reply.body, str):
        return text(reply.code, reply.body)
    return Response(reply.code, (json.dumps(reply.body) + "\n").encode(), JSON)


def _pairs(server: ControlServer, request: Request, params: Params, action: str) -> Response:
    # Every parameter names a task (the original's shape: ?web=off&db=wait).
    args = {name: values[0] for name, values in sorted(params.items())}
    return _reply(server, request, action, args)


def _control(server: ControlServer, request: Request, params: Params) -> Response:
    return _pairs(server, request, params, "control")


def _count(server: ControlServer, request: Request, params: Params) -> Response:
    return _pairs(server, request, params, "count")


def _start(server: ControlServer, request: Request, params: Params) -> Response:
    names = tuple(params.get("task", ()))
    if not names:
        return text(400, "missing parameter 'task'\n")
    return _reply(server, request, "start", {"tasks": names})


def _restart(server: ControlServer, request: Request, params: Params) -> Response:
    args = {"task": first(params, "task"), "instance": first(params, "instance")}
    return _reply(server, request, "restart", args)


def _rollout(server: ControlServer, request: Request, params: Params) -> Response:
    args = {"task": first(params, "task"), "resume": first(params, "resume")}
    return _reply(server, request, "rollout", args)


def _signal(server: ControlServer, request: Request, params: Params) -> Response:
    raw = first(params, "signal")
    if not raw:
        return text(400, "missing parameter 'signal'\n")
    name = signal_name(raw)
    if name is None:
        return text(400, f"bad signal '{raw}'\n")
    args = {"task": first(params, "task"), "signal": name, "instance": first(params, "instance")}
    return _reply(server, request, "signal", args)


def _event(server: ControlServer, request: Request, params: Params) -> Response:
    return _reply(server, request, "event", {"name": first(params, "name")})


def _header_value(message: str) -> str:
    line = message.strip().splitlines()[0] if message.strip() else ""
    return line.encode("latin-1", "replace").decode("latin-1")[:300]


def _grants(server: ControlServer, request: Request) -> tuple[str, ...] | None:
    return None if request.listener is None else request.listener.control_grants


def _granted(server: ControlServer, request: Request, action: str) -> Response | None:
    """None when the core grants ``action`` (performed here), else its answer."""
    reply = server.control(action, {}, request.who, _grants(server, request))
    if reply is None:
        return text(503, "taskforce is exiting\n")
    if reply.code != 200:
        return text(reply.code, str(reply.body))
    return None


def _reload(server: ControlServer, request: Request, params: Params) -> Response | Deferred:
    """Read the files again (on a worker thread: see ``taskforce.loader``),
    then apply them on the loop and answer."""
    refused = _granted(server, request, "reload")
    if refused is not None:
        return refused
    shell = server.shell

    def finish(loaded: object) -> Response:
        assert isinstance(loaded, ev.Event)
        event = shell.apply_loaded(loaded)
        body = "Taskforce config reload initiated\n"
        if isinstance(event, ev.ConfigRejected):
            errors = event.errors or (event.error,)
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            outcome = "rejected: " + _header_value(errors[0]) + more
            body += "".join(f"{error}\n" for error in errors)
        elif isinstance(event, ev.ConfigLoaded) and not shell.core.in_force(event.config):
            # Read, but not taken: the core refused it (as a first config
            # while the roles file is missing); its log says why.
            why = (
                f"roles file {event.roles_missing} not found"
                if event.roles_missing is not None
                else "taskforce refused it (its log says why)"
            )
            outcome = "rejected: " + _header_value(why)
            body += f"{why}\n"
        else:
            outcome = "applied"
        return text(202, body, headers=[("X-Taskforce-Reload", outcome)])

    return Deferred(lambda: shell.load_inputs("request"), finish)


def _shutdown(reset: bool) -> Callable[[ControlServer, Request, Params], Response]:
    def handler(server: ControlServer, request: Request, params: Params) -> Response:
        refused = _granted(server, request, "reset" if reset else "stop")
        if refused is not None:
            return refused

        def stop() -> None:
            if reset:
                server.shell.request_reset("control request")
            else:
                server.shell.feed(
                    ev.StopRequested(at=server.shell.now, reset=False, reason="control request")
                )

        word = "reset" if reset else "exit"
        return text(202, f"Taskforce {word} initiated\n", after=stop)

    return handler


def _plan(server: ControlServer, request: Request, params: Params) -> Response | Deferred:
    """What a posted config would change, computed by a shadow of the core.

    Reading and checking the config takes time in its size (up to
    ``PLAN_BODY_LIMIT`` bytes, and ``config.MAX_NODES`` values once its
    aliases are expanded: seconds, at the top), so it runs on a worker
    thread; only the plan itself, which copies the live core as a reload
    would use it, runs on the loop, with the posted config's tasks already
    built.
    """
    refused = _granted(server, request, "plan")
    if refused is not None:
        return refused
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media in ("application/x-www-form-urlencoded", "multipart/form-data"):
        posted = (first(params, "config") or "").encode()
    else:
        posted = request.body
    if not posted.strip():
        return text(400, "no config posted: send the config text as the request body\n")
    try:
        config_text = posted.decode("utf-8")
    except UnicodeDecodeError as exc:
        return text(400, f"the posted config is not UTF-8 text (byte {exc.start})\n")
    core = server.shell.core
    roles, role_values = core.roles, dict(core.role_values)
    roles_param = first(params, "roles")
    if roles_param is not None:
        roles = None if roles_param.strip() == "-" else tuple(roles_param.replace(",", " ").split())
        role_values = {}
    facts = core.facts

    def check() -> object:
        # On the worker thread: reads only the text and what was captured.
        try:
            return load_config_text(config_text, "<posted config>", roles, role_values, facts=facts)
        except ConfigError as exc:
            errors = getattr(exc, "errors", None) or [exc]
            return text(400, "".join(f"{error}\n" for error in errors))

    def finish(checked: object) -> Response:
        if isinstance(checked, Response):
            return checked
        assert isinstance(checked, dict)
        try:
            answer = status.plan(server.shell.core, checked, roles, role_values)
        except SpecError as exc:
            where = ".".join(str(p) for p in exc.path)
            return text(400, f"<posted config>: {where}: {exc.message}\n")
        answer["roles"] = list(roles) if roles is not None else None
        return Response(200, (json.dumps(answer, indent=1) + "\n").encode(), JSON)

    return Deferred(check, finish)


MANAGE: dict[str, Callable[[ControlServer, Request, Params], Response | Deferred]] = {
    "/manage/control": _control,
    "/manage/count": _count,
    "/manage/reload": _reload,
    "/manage/stop": _shutdown(reset=False),
    "/manage/reset": _shutdown(reset=True),
    "/manage/start": _start,
    "/manage/restart": _restart,
    "/manage/rollout": _rollout,
    "/manage/signal": _signal,
    "/manage/event": _event,
    "/manage/plan": _plan,
}
