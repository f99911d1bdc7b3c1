"""``artifact-import serve``: the storage-proxy routes as a standalone server."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import click

from ..errors import ConfigError
from .common import guarded, verbosity

if TYPE_CHECKING:
    from aiohttp import web

    from ..config import Config
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
    --config. With [server] task-store = "redis://HOST:PORT/DB", tasks live in
    Redis/Valkey and every proxy sharing it answers for them, claims queued
    ones it can reach, and takes over those of a proxy that died. Registries:
    the Hugging Face Hub (HF_ENDPOINT, HF_TOKEN), and S3 when AWS_ENDPOINT_URL
    is set. SIGINT / SIGTERM cancel running imports, clean them up, and exit
    (in a fleet: hand them back to the other proxies).

    \b
    Example:
      artifact-import --config proxy.toml serve --port 8080 &
      curl -X POST localhost:8080/import -d '{"models": [{"repo_id": "org/model"}],
           "vfolder_id": "local/user-1/8c8a3ff2c5d84a1c9e0f3b5d2a7e6c41"}'
    """

    from aiohttp import web

    from ..config import VerifySettings, load_config
    from ..proxy.routes import create_app
    from ..verifiers import build_verifiers

    def build() -> tuple[web.Application, Config | None]:
        config = load_config(ctx.obj["config"]) if ctx.obj["config"] else None
        registries = _registries()
        app = create_app(
            registries,
            storage_pool=config.pool() if config else None,
            volume_pool=config.volume_pool() if config else None,
            verifiers=build_verifiers(config.verify if config else VerifySettings()),
            settings=config.server if config else None,
        )

        async def close(_: web.Application) -> None:
            # After the imports were cancelled (on_shutdown): their HTTP sessions and S3 pools, so that
            # nothing is reported unclosed at exit.
            for registry in registries.values():
                await registry.aclose()
            if config is not None:
                await config.aclose()

        app.on_cleanup.append(close)
        return app, config

    app, _ = guarded(build, subject="serve", as_json=False, verbose=ctx.obj["verbose"])
    click.echo(f"serving imports on http://{host}:{port}/import", err=True)
    # A task store that cannot be reached fails the start-up hook: one error line, not a traceback.
    guarded(
        lambda: web.run_app(app, host=host, port=port, print=None, shutdown_timeout=30, handle_signals=True),
        subject="serve",
        as_json=False,
        verbose=ctx.obj["verbose"],
    )
