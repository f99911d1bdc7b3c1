"""``artifact-import serve``: the storage-proxy routes as a standalone server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import TYPE_CHECKING

import attrs
import click

from ..errors import ConfigError
from .common import guarded, verbosity

if TYPE_CHECKING:
    from aiohttp import web

    from ..proxy.limits import LimitedRunner
    from ..registries.base import AbstractRegistry

log = logging.getLogger(__name__)


def _registries() -> dict[str, AbstractRegistry]:
    from ..registries.huggingface import HuggingFaceRegistry
    from ..registries.s3 import S3Registry
    from ..s3 import S3Endpoint

    registries: dict[str, AbstractRegistry] = {}
    hub = HuggingFaceRegistry()
    registries[hub.name] = hub
    try:
        s3 = S3Registry(endpoint=S3Endpoint.from_env())
    except ConfigError:
        log.info("no AWS_ENDPOINT_URL: the s3 registry is not served")
    else:
        registries[s3.name] = s3
    return registries


@click.command("serve")
@verbosity
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.pass_context
def serve_cmd(ctx: click.Context, host: str, port: int) -> None:
    """Serve the import routes (POST/GET/DELETE /import, events) for a storage proxy or scripts.

    Storages, volumes, verifiers and [server] limits and webhooks come from
    --config, which is required: imports go to its [storage.*] and
    [volume.*] (it must name one, unless it joins a fleet). With [server]
    task-store = "redis://HOST:PORT/DB", tasks live in Redis/Valkey and every
    proxy sharing it answers for them, claims queued ones it can reach, and
    takes over those of a proxy that died. Registries:
    the Hugging Face Hub (HF_ENDPOINT, HF_TOKEN), and S3 when AWS_ENDPOINT_URL
    is set. SIGINT / SIGTERM cancel running imports, clean them up, and exit
    (in a fleet: hand them back to the other proxies).

    Every request must present the shared secret ([server] auth-token-file or
    auth-token, or ARTIFACT_IMPORT_AUTH_TOKEN) as "Authorization: Bearer
    SECRET" or "X-BackendAI-Storage-Auth-Token: SECRET". Without one, serve
    listens on a loopback address only. Connections and event streams per
    client and in all, and queued imports, are bounded ([server] max-*);
    the descriptor limit is raised to its hard limit at start.

    \b
    Example:
      ARTIFACT_IMPORT_AUTH_TOKEN=$(cat /etc/artifact-import/token) \\
        artifact-import --config proxy.toml serve --host 0.0.0.0 --port 8080 &
      curl -X POST localhost:8080/import -H "Authorization: Bearer $(cat /etc/artifact-import/token)" \\
           -d '{"models": [{"repo_id": "org/model"}],
                "vfolder_id": "local/user-1/8c8a3ff2c5d84a1c9e0f3b5d2a7e6c41"}'
    """

    from ..config import ServerSettings, load_config
    from ..proxy.auth import ENV_TOKEN, is_loopback, token_from_env
    from ..proxy.limits import LimitedRunner, raise_fd_limit
    from ..proxy.routes import create_app, limits_of
    from ..verifiers import build_verifiers

    def build() -> tuple[web.Application, ServerSettings]:
        if not ctx.obj["config"]:
            raise ConfigError(
                "serve needs --config FILE (or ARTIFACT_IMPORT_CONFIG): imports go to the [storage.*] and "
                "[volume.*] it names, and without them every request would be refused"
            )
        config = load_config(ctx.obj["config"])
        # A fleet's proxy may have none: it takes requests for what the other proxies reach.
        if not config.storages and not config.volumes and config.server.task_store is None:
            raise ConfigError(
                f"{config.path}: serve needs at least one [storage.NAME] or [volume.NAME] for imports to go to "
                "(or [server] task-store, to answer for a fleet of proxies that have them)"
            )
        settings = config.server
        if settings.auth_token is None:
            settings = attrs.evolve(settings, auth_token=token_from_env(os.environ))
        if settings.auth_token is None and not is_loopback(host):
            raise ConfigError(
                f"refusing to listen on {host} without authentication: anyone who can connect could import into "
                f"any vfolder and cancel any import. Set [server] auth-token-file in --config, or {ENV_TOKEN}; "
                "or listen on 127.0.0.1"
            )
        registries = _registries()
        app = create_app(
            registries,
            storage_pool=config.pool(),
            volume_pool=config.volume_pool(),
            verifiers=build_verifiers(config.verify),
            settings=settings,
            signature=config.verify.signature,
        )

        async def close(_: web.Application) -> None:
            # After the imports were cancelled (on_shutdown): their HTTP sessions and S3 pools, so that
            # nothing is reported unclosed at exit.
            for registry in registries.values():
                await registry.aclose()
            await config.aclose()

        app.on_cleanup.append(close)
        return app, settings

    app, settings = guarded(build, subject="serve", as_json=False, verbose=ctx.obj["verbose"])
    limits = limits_of(settings).within(raise_fd_limit())
    guard = "token required" if settings.auth_token else "no token: loopback only"
    click.echo(f"serving imports on http://{host}:{port}/import ({guard})", err=True)
    runner = LimitedRunner(app, limits, handle_signals=True, shutdown_timeout=30, keepalive_timeout=15)
    # A task store that cannot be reached fails the start-up hook: one error line, not a traceback.
    guarded(lambda: _run(runner, host, port), subject="serve", as_json=False, verbose=ctx.obj["verbose"])


def _run(runner: LimitedRunner, host: str, port: int) -> None:
    """Serve until SIGINT / SIGTERM, then shut down as ``aiohttp.web.run_app`` does (its runner cannot be
    given: ours counts connections)."""
    from aiohttp import web

    async def serve() -> None:
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
            await asyncio.Event().wait()  # until a signal ends it
        finally:
            await runner.cleanup()

    loop = asyncio.new_event_loop()
    main = loop.create_task(serve())
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(main)
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
