"""A request body read as JSON by every route that takes one: bounded, and a 400 (413) naming what is wrong."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

#: A body is a few hundred bytes; this leaves room for long include lists, not for abuse.
MAX_BODY = 256 * 1024


class BadRequest(Exception):
    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.status = status


class Oversized:
    """A number in a body too large to be one we use: it fails the type check of its field, which names it."""

    def __init__(self, digits: int) -> None:
        self.digits = digits


async def read_json(request: web.Request) -> Any:
    """The body as JSON, or :class:`BadRequest` naming what is wrong with it; never a 500, whatever the bytes."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BadRequest("body", f"larger than {MAX_BODY // 1024} KiB", status=413) from None
    try:
        return json.loads(raw, parse_int=_integer, parse_constant=_no_constant)
    except RecursionError:
        raise BadRequest("body", "nested deeper than any body of this API") from None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError, NaN / Infinity
        raise BadRequest("body", "the body must be a JSON object") from None


def _integer(text: str) -> int | Oversized:
    # int() of a 5,000-digit number raises (and costs time quadratic in its length): no body needs one.
    return Oversized(len(text)) if len(text) > 20 else int(text)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
