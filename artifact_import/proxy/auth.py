"""Who may call the import routes: the holders of one shared secret.

The secret comes from the config (``[server] auth-token`` or
``auth-token-file``) or the environment (``ARTIFACT_IMPORT_AUTH_TOKEN``).
A request presents it as ``Authorization: Bearer SECRET`` or, as Backend.AI's
manager calls its storage proxies, ``X-BackendAI-Storage-Auth-Token: SECRET``;
it is compared in constant time. Anything else is answered ``401`` before any
route runs, with a body that says nothing about tasks (whether one exists,
whose it is).

:func:`token_middleware` is what :func:`..routes.create_app` installs; an
application that mounts the routes behind its own check (Backend.AI's
storage proxy has one for the same header) leaves it out, or adds it to its
own middlewares.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from aiohttp.typedefs import Middleware

from ..config import auth_token_problem
from ..errors import ConfigError

ENV_TOKEN = "ARTIFACT_IMPORT_AUTH_TOKEN"
BACKENDAI_HEADER = "X-BackendAI-Storage-Auth-Token"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def token_from_env(env: Mapping[str, str]) -> str | None:
    """The secret in ``ARTIFACT_IMPORT_AUTH_TOKEN``, if set; a malformed one is refused without quoting it."""
    value = env.get(ENV_TOKEN)
    if not value:
        return None
    problem = auth_token_problem(value)
    if problem:
        raise ConfigError(f"{ENV_TOKEN}: the auth token {problem}")
    return value


def presented(request: web.BaseRequest) -> str | None:
    """The secret a request presents, in either header."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get(BACKENDAI_HEADER) or None


def token_middleware(token: str) -> Middleware:
    """A middleware answering ``401`` to every request that does not present ``token``."""
    expected = token.encode()

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = presented(request)
        # compare_digest takes as long whatever the bytes: the secret cannot be found a byte at a time.
        if given is None or not hmac.compare_digest(given.encode(errors="surrogateescape"), expected):
            return unauthorized()
        return await handler(request)

    return authenticate


def unauthorized() -> web.Response:
    return web.json_response(
        {
            "error": {
                "field": "authorization",
                "message": f"authentication required: send Authorization: Bearer TOKEN or {BACKENDAI_HEADER}",
            }
        },
        status=401,
        headers={"WWW-Authenticate": 'Bearer realm="artifact-import"'},
    )


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` stands for is a loopback one (only local processes can connect)."""
    if host in ("", "*"):
        return False  # every interface
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)
