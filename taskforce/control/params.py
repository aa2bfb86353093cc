"""The parameters of a control request: the query merged over a form body.

Parameters come from the query and from a ``application/x-www-form-urlencoded``
or ``multipart/form-data`` body, the query winning, and only the first value
of each counts (``first``); more than ``MAX_FIELDS`` is a ``ParseError``
(answered 400), not work to do.  Split out of ``taskforce.control.api``.

This module only parses bytes it is given; it never answers a request,
touches the core or does IO.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from taskforce.control.http import Request

Params = dict[str, list[str]]

#: More fields than this in one request is an error, not work to do.
MAX_FIELDS = 2000


class ParseError(ValueError):
    pass


def request_params(request: Request) -> Params:
    """The query merged over the form body (the query wins)."""
    params: Params = {}
    if request.method == "POST" and request.body:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media == "application/x-www-form-urlencoded":
            params.update(_parse_qs(request.body.decode("utf-8", "replace")))
        elif media == "multipart/form-data":
            params.update(_multipart(request))
    params.update(_parse_qs(request.query))
    return params


def _parse_qs(query: str) -> Params:
    try:
        return parse_qs(query, keep_blank_values=True, max_num_fields=MAX_FIELDS)
    except ValueError as exc:
        raise ParseError(str(exc)) from None


def _multipart(request: Request) -> Params:
    # email is 1 MiB of code only a multipart form needs: loaded by the first.
    from email.parser import BytesParser
    from email.policy import HTTP

    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode("latin-1")
    try:
        message = BytesParser(policy=HTTP).parsebytes(head + request.body)
        if not message.is_multipart():
            raise ParseError("multipart body without parts")
        params: Params = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if not isinstance(name, str):
                continue
            payload = part.get_payload(decode=True)
            value = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
            params.setdefault(name, []).append(value)
            if len(params) > MAX_FIELDS:
                raise ParseError("too many fields")
    except (ValueError, LookupError, TypeError) as exc:
        raise ParseError(str(exc)) from None
    return params


def first(params: Params, name: str) -> str | None:
    values = params.get(name)
    return values[0] if values else None
