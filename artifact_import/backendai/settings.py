"""What the bridge does inside a storage proxy: verifiers, files at once, retries.

By default, what a default config file of artifact-import says; with
``ARTIFACT_IMPORT_CONFIG=/etc/backend.ai/artifact-import.toml`` in the proxy's
environment, that file's ``[verify]`` section (ClamAV address, pickle and
format policies) and its ``[server] max-concurrent-files``. A program (or a
test) can set them with :func:`configure`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import attrs

from ..config import VerifySettings, load_config
from ..model import DEFAULT_CONCURRENT_FILES
from ..registries.http import HttpTimeouts, RetryPolicy

#: The environment variable naming the config file the bridge reads.
CONFIG_ENV = "ARTIFACT_IMPORT_CONFIG"


@attrs.frozen
class BridgeSettings:
    verify: VerifySettings = attrs.field(factory=VerifySettings)
    max_concurrent_files: int = DEFAULT_CONCURRENT_FILES
    #: Hub retries and timeouts; None: the registry's defaults (and huggingface_hub's variables).
    retry: RetryPolicy | None = None
    timeouts: HttpTimeouts | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BridgeSettings:
        path = (os.environ if env is None else env).get(CONFIG_ENV)
        if not path:
            return cls()
        config = load_config(path, env)
        return cls(verify=config.verify, max_concurrent_files=config.server.max_concurrent_files)


_settings: BridgeSettings | None = None


def configure(settings: BridgeSettings | None) -> None:
    """Use ``settings`` for the imports started from now on (None: read the environment again)."""
    global _settings
    _settings = settings


def current() -> BridgeSettings:
    global _settings
    if _settings is None:
        _settings = BridgeSettings.from_env()
    return _settings
