"""The TOML config file: named storages, in the style of the storage proxy's config.

    [storage.models]
    backend = "minio"            # or "s3"; or "vfs" with path = "/srv/models"
    endpoint = "http://127.0.0.1:9000"
    bucket = "models"
    prefix = "hub"
    read-only = false
    [storage.models.options]
    access-key = "..."           # or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
    secret-key = "..."

    [verify.clamav]
    address = "tcp://127.0.0.1:3310"   # or unix:///run/clamav/clamd.ctl
    window-size = "64MiB"               # below clamd's StreamMaxLength and MaxFileSize
    overlap = "1MiB"
    quarantine = "/var/lib/artifact-import/quarantine"   # or storage:NAME[/PATH]; flagged files go here
    [verify.pickle]
    policy = "fail"                     # or "warn", "off"
    allow = ["mypackage.MyConfig"]      # more globals a pickle may import
    [verify.torchscript]                # TorchScript archives: code that runs when they are loaded
    policy = "fail"                     # or "warn", "off"
    [verify.formats]                    # Keras code, ONNX external data, GGUF headers, NeMo _target_
    policy = "fail"                     # or "warn", "off"
    [verify.hub-scan]                   # the Hub's own ClamAV and pickle scan of each file
    policy = "fail"                     # or "warn", "off" (off also skips asking for it)
    [verify.signature]                  # OpenSSF model signing (model.sig); the signing extra
    policy = "require"                  # or "if-present", "off" (default: if-present when a signer is given)
    public-key = "keys/signer.pub"      # or certificate-chain = ["ca.pem"], or identity + issuer (Sigstore);
                                        # relative paths are relative to this file

    [volume.local]                     # users' vfolders (vfolder:local/SCOPE/FOLDER_ID)
    backend = "vfs"                     # or "minio" / "s3" with endpoint, bucket, prefix, options
    path = "/srv/vfroot/local"
    read-only-vfolders = ["user-1/8c8a3ff2c5d84a1c9e0f3b5d2a7e6c41"]
    [volume.local.quotas]
    "user-1" = "100GiB"                 # per quota scope; "unlimited" or absent: no limit

    [server]                            # artifact-import serve / create_app()
    auth-token-file = "/etc/artifact-import/token"   # or auth-token = "..."; or ARTIFACT_IMPORT_AUTH_TOKEN
    max-concurrent-imports = 2          # more requests wait, in state "queued"
    max-queued-imports = 1000           # more requests are answered 429
    max-concurrent-files = 8            # per import
    staging = "scratch"                 # a storage above, for DOWNLOAD/VERIFY of vfolder imports
    webhooks = ["https://hooks.example/import"]   # POSTed when an import ends
    max-connections = 1000              # and -per-client = 256; max-event-streams = 128, -per-client = 16

A mistake is reported with the file, the line and the key, and never with
the value of a secret.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from .errors import ConfigError
from .model import DEFAULT_CONCURRENT_FILES
from .s3 import S3Credentials, S3Endpoint
from .signing import DEFAULT_SIGNATURE_FILE, POLICIES, SignatureSettings
from .storages.base import AbstractStorage, StoragePool
from .storages.object import DEFAULT_MULTIPART_THRESHOLD, DEFAULT_PART_SIZE, ObjectStorage
from .storages.vfs import VFSStorage
from .verifiers.clamav import DEFAULT_OVERLAP, DEFAULT_WINDOW
from .volumes.base import AbstractVolume, VFolderID, VolumePool, check_scope
from .volumes.object import ObjectVolume
from .volumes.vfs import VFSVolume

_VFS_KEYS = {"backend", "path", "read-only", "fsync"}
_OBJECT_KEYS = {
    "backend",
    "endpoint",
    "bucket",
    "prefix",
    "region",
    "read-only",
    "multipart-threshold",
    "part-size",
    "options",
}
# Seed 000 spells them minio-access-key / minio-secret-key; both are accepted.
_OPTION_KEYS = {
    "access-key": "access-key",
    "secret-key": "secret-key",
    "session-token": "session-token",
    "minio-access-key": "access-key",
    "minio-secret-key": "secret-key",
}
#: Keys a [volume.NAME] has beyond those of a storage of its backend.
_VOLUME_KEYS = {"quotas", "read-only-vfolders"}
_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]i?B?)?\s*$", re.IGNORECASE)


@attrs.frozen
class VerifySettings:
    clamd: str | None = None
    clamd_window: int = DEFAULT_WINDOW
    clamd_overlap: int = DEFAULT_OVERLAP
    clamd_timeout: float = 120.0
    #: Where ``clamd`` was set, as the way to import without the scan (said when clamd cannot be reached).
    clamd_unset: str = "import without a malware scan"
    quarantine: str | None = None
    pickle_policy: str = "fail"
    pickle_allow: frozenset[str] = frozenset()
    #: TorchScript archives (code that runs when they are loaded), whatever their pickles import.
    torchscript_policy: str = "fail"
    #: Keras, ONNX, GGUF and NeMo checks.
    format_policy: str = "fail"
    #: The Hub's own per-file scan.
    hub_scan_policy: str = "fail"
    #: The model's signature (model.sig): required, checked if present, or not looked at; whose to trust.
    signature: SignatureSettings = attrs.field(factory=SignatureSettings)


@attrs.frozen
class ServerSettings:
    """Per deployment (``[server]``): who may call, imports and files at once, what clients may hold, staging
    storage, completion webhooks."""

    #: The secret every request presents (``Authorization: Bearer`` or ``X-BackendAI-Storage-Auth-Token``);
    #: None: no check (``serve`` then listens on loopback only).
    auth_token: str | None = attrs.field(default=None, repr=False)
    max_concurrent_imports: int = 2
    #: Imports waiting for a slot beyond which a new one is answered 429 (in a fleet: waiting in the fleet).
    max_queued_imports: int = 1000
    max_connections: int = 1000
    max_connections_per_client: int = 256
    max_event_streams: int = 128
    max_event_streams_per_client: int = 16
    max_concurrent_files: int = DEFAULT_CONCURRENT_FILES
    staging: str | None = None
    webhooks: tuple[str, ...] = ()
    webhook_attempts: int = 5
    webhook_backoff: float = 1.0
    #: ``redis://HOST:PORT/DB`` (or ``rediss://``, ``valkey://``): tasks shared by a fleet of proxies (see .fleet).
    task_store: str | None = None
    #: Seconds a proxy's claim on a running task lasts without renewal (a dead proxy's tasks wait this long).
    lease: float = 15.0
    #: Seconds a finished task stays answerable.
    finished_ttl: float = 7 * 24 * 3600.0


@attrs.frozen
class Config:
    path: Path | None
    storages: Mapping[str, AbstractStorage] = attrs.field(factory=dict)
    verify: VerifySettings = attrs.field(factory=VerifySettings)
    volumes: Mapping[str, AbstractVolume] = attrs.field(factory=dict)
    server: ServerSettings = attrs.field(factory=ServerSettings)

    def pool(self) -> StoragePool:
        return StoragePool(self.storages)

    def volume_pool(self) -> VolumePool:
        return VolumePool(self.volumes)

    async def aclose(self) -> None:
        for storage in self.storages.values():
            await storage.aclose()
        for volume in self.volumes.values():
            await volume.aclose()


class _Reader:
    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def line_of(self, table: str, key: str | None = None) -> int | None:
        header = re.compile(rf"^\s*\[\s*{re.escape(table)}\s*\]")
        for i, line in enumerate(self.lines):
            if header.match(line):
                if key is None:
                    return i + 1
                for j in range(i + 1, len(self.lines)):
                    if self.lines[j].lstrip().startswith("["):
                        break
                    if re.match(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=", self.lines[j]):
                        return j + 1
                return i + 1
        return None

    def error(self, table: str, key: str | None, problem: str) -> ConfigError:
        line = self.line_of(table, key)
        where = f"{self.path}:{line}" if line else str(self.path)
        name = f"{table}.{key}" if key else table
        return ConfigError(f"{where}: {name}: {problem}")


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` and build its storages; raise :class:`ConfigError` naming the line and key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    reader = _Reader(path, text)
    unknown = set(data) - {"storage", "verify", "volume", "server"}
    if unknown:
        key = sorted(unknown)[0]
        raise reader.error(key, None, "unknown section (known: server, storage, verify, volume)")
    environ = os.environ if env is None else env
    storages: dict[str, AbstractStorage] = {}
    for name, table in (data.get("storage") or {}).items():
        if not isinstance(table, dict):
            raise reader.error(f"storage.{name}", None, "must be a table, e.g. [storage.NAME]")
        storages[name] = _storage(reader, name, table, environ)
    volumes: dict[str, AbstractVolume] = {}
    for name, table in (data.get("volume") or {}).items():
        if not isinstance(table, dict):
            raise reader.error(f"volume.{name}", None, "must be a table, e.g. [volume.NAME]")
        volumes[name] = _volume(reader, name, table, environ)
    server = _server(reader, data.get("server") or {}, storages)
    return Config(path, storages, _verify(reader, data.get("verify") or {}), volumes, server)


def _server(reader: _Reader, table: dict[str, Any], storages: Mapping[str, AbstractStorage]) -> ServerSettings:
    keys = {
        "auth-token",
        "auth-token-file",
        "max-concurrent-imports",
        "max-queued-imports",
        "max-connections",
        "max-connections-per-client",
        "max-event-streams",
        "max-event-streams-per-client",
        "max-concurrent-files",
        "staging",
        "webhooks",
        "webhook-attempts",
        "webhook-backoff",
        "task-store",
        "lease",
        "finished-ttl",
    }
    _known(reader, "server", table, keys)
    counts = {}
    for key, default in (
        ("max-concurrent-imports", 2),
        ("max-concurrent-files", DEFAULT_CONCURRENT_FILES),
        ("webhook-attempts", 5),
    ):
        value = table.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1000:
            raise reader.error("server", key, "must be a whole number from 1 to 1000")
        counts[key] = value
    for key, default in (
        ("max-queued-imports", 1000),
        ("max-connections", 1000),
        ("max-connections-per-client", 256),
        ("max-event-streams", 128),
        ("max-event-streams-per-client", 16),
    ):
        value = table.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1_000_000:
            raise reader.error("server", key, "must be a whole number from 1 to 1000000")
        counts[key] = value
    token = _auth_token(reader, table)
    backoff = table.get("webhook-backoff", 1.0)
    if not isinstance(backoff, int | float) or isinstance(backoff, bool) or backoff < 0:
        raise reader.error("server", "webhook-backoff", "must be a number of seconds")
    seconds: dict[str, float] = {}
    for key, fallback, low in (("lease", 15.0, 1.0), ("finished-ttl", 7 * 24 * 3600.0, 60.0)):
        given = table.get(key, fallback)
        if not isinstance(given, int | float) or isinstance(given, bool) or given < low:
            raise reader.error("server", key, f"must be a number of seconds, at least {low:g}")
        seconds[key] = float(given)
    store = _string(reader, "server", table, "task-store")
    if store is not None and not store.startswith(("redis://", "rediss://", "valkey://", "valkeys://", "unix://")):
        # The URL may carry a password: never quoted.
        raise reader.error("server", "task-store", "must be a redis:// (or rediss://, valkey://, unix://) URL")
    staging = _string(reader, "server", table, "staging")
    if staging is not None and staging not in storages:
        raise reader.error("server", "staging", f"no storage named {staging!r} in this file")
    hooks = table.get("webhooks", [])
    if not isinstance(hooks, list) or not all(
        isinstance(h, str) and h.startswith(("http://", "https://")) for h in hooks
    ):
        # URLs may carry tokens: never quoted.
        raise reader.error("server", "webhooks", "must be a list of http:// or https:// URLs")
    return ServerSettings(
        auth_token=token,
        max_concurrent_imports=counts["max-concurrent-imports"],
        max_queued_imports=counts["max-queued-imports"],
        max_connections=counts["max-connections"],
        max_connections_per_client=counts["max-connections-per-client"],
        max_event_streams=counts["max-event-streams"],
        max_event_streams_per_client=counts["max-event-streams-per-client"],
        max_concurrent_files=counts["max-concurrent-files"],
        staging=staging,
        webhooks=tuple(hooks),
        webhook_attempts=counts["webhook-attempts"],
        webhook_backoff=float(backoff),
        task_store=store.replace("valkey", "redis", 1) if store else None,
        lease=seconds["lease"],
        finished_ttl=seconds["finished-ttl"],
    )


#: Shorter secrets are refused: they can be guessed.
MIN_TOKEN_LENGTH = 16


def auth_token_problem(token: str) -> str | None:
    """What makes ``token`` unfit to be the proxy's shared secret, or None."""
    if len(token) < MIN_TOKEN_LENGTH:
        return f"must be at least {MIN_TOKEN_LENGTH} characters long"
    if not all(33 <= ord(c) <= 126 for c in token):
        return "must be printable ASCII without spaces (it travels in an HTTP header)"
    return None


def _auth_token(reader: _Reader, table: Mapping[str, Any]) -> str | None:
    """``auth-token``, or the secret in ``auth-token-file`` (relative to the config file); never quoted."""
    inline = table.get("auth-token")
    path = table.get("auth-token-file")
    if inline is not None and path is not None:
        raise reader.error("server", "auth-token-file", "give auth-token or auth-token-file, not both")
    if inline is not None:
        problem = "must be a string" if not isinstance(inline, str) else auth_token_problem(inline)
        if problem:
            raise reader.error("server", "auth-token", problem)
        return str(inline)
    if path is None:
        return None
    if not isinstance(path, str) or not path:
        raise reader.error("server", "auth-token-file", "must be the path of a file holding the token")
    where = reader.path.parent / Path(path).expanduser()
    try:
        # One line; the newline an editor adds is not part of it.
        token = where.read_text(encoding="utf-8").strip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise reader.error("server", "auth-token-file", f"cannot read {where} ({reason})") from None
    problem = auth_token_problem(token)
    if problem:
        raise reader.error("server", "auth-token-file", f"the token in {where} {problem}")
    return token


def _verify(reader: _Reader, table: dict[str, Any]) -> VerifySettings:
    _known(reader, "verify", table, {"clamav", "pickle", "torchscript", "formats", "hub-scan", "signature"})
    clam = table.get("clamav") or {}
    pick = table.get("pickle") or {}
    _known(reader, "verify.clamav", clam, {"address", "window-size", "overlap", "timeout", "quarantine"})
    _known(reader, "verify.pickle", pick, {"policy", "allow"})
    policy = _policy(reader, "verify.pickle", pick)
    allow = pick.get("allow", [])
    if not isinstance(allow, list) or not all(isinstance(a, str) and "." in a for a in allow):
        raise reader.error("verify.pickle", "allow", 'must be a list of "module.name" strings')
    timeout = clam.get("timeout", 120.0)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
        raise reader.error("verify.clamav", "timeout", "must be a positive number of seconds")
    return VerifySettings(
        clamd=_string(reader, "verify.clamav", clam, "address"),
        clamd_window=_size(reader, "verify.clamav", clam, "window-size", DEFAULT_WINDOW),
        clamd_overlap=_size(reader, "verify.clamav", clam, "overlap", DEFAULT_OVERLAP),
        clamd_timeout=float(timeout),
        clamd_unset=f"remove address from [verify.clamav] in {reader.path} to import without a malware scan",
        quarantine=_string(reader, "verify.clamav", clam, "quarantine"),
        pickle_policy=policy,
        pickle_allow=frozenset(allow),
        torchscript_policy=_policy(reader, "verify.torchscript", table.get("torchscript") or {}),
        format_policy=_policy(reader, "verify.formats", table.get("formats") or {}),
        hub_scan_policy=_policy(reader, "verify.hub-scan", table.get("hub-scan") or {}),
        signature=_signature(reader, table.get("signature") or {}),
    )


def _signature(reader: _Reader, table: dict[str, Any]) -> SignatureSettings:
    where = "verify.signature"
    keys = {"policy", "file", "public-key", "certificate-chain", "identity", "issuer", "trust-config"}
    _known(reader, where, table, keys)
    policy = _string(reader, where, table, "policy")
    if policy is not None and policy not in POLICIES:
        raise reader.error(where, "policy", f"must be {', '.join(repr(p) for p in POLICIES)}")
    chain = table.get("certificate-chain", [])
    if isinstance(chain, str):
        chain = [chain]
    if not isinstance(chain, list) or not all(isinstance(c, str) and c for c in chain):
        raise reader.error(where, "certificate-chain", "must be a PEM file or a list of them")

    def beside(value: str | None) -> str | None:
        # Key files named in a config file are where the file says, wherever the command runs.
        return str(reader.path.parent / value) if value is not None else None

    settings = SignatureSettings(
        policy=policy,
        file=_string(reader, where, table, "file") or DEFAULT_SIGNATURE_FILE,
        public_key=beside(_string(reader, where, table, "public-key")),
        certificates=tuple(str(reader.path.parent / c) for c in chain),
        identity=_string(reader, where, table, "identity"),
        issuer=_string(reader, where, table, "issuer"),
        trust_config=beside(_string(reader, where, table, "trust-config")),
    )
    try:
        settings.check()
    except ConfigError as exc:
        raise reader.error(where, None, exc.message) from None
    return settings


def _policy(reader: _Reader, section: str, table: dict[str, Any]) -> str:
    _known(reader, section, table, {"policy"} | ({"allow"} if section == "verify.pickle" else set()))
    policy = _string(reader, section, table, "policy") or "fail"
    if policy not in ("fail", "warn", "off"):
        raise reader.error(section, "policy", 'must be "fail", "warn" or "off"')
    return policy


def _storage(reader: _Reader, name: str, table: dict[str, Any], env: Mapping[str, str]) -> AbstractStorage:
    backend, args, options = _backend(reader, f"storage.{name}", table, env, set())
    if backend == "vfs":
        return VFSStorage(name, *args, **options)
    return ObjectStorage(name, *args, **options)


def _backend(
    reader: _Reader, where: str, table: Mapping[str, Any], env: Mapping[str, str], extra_keys: set[str]
) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """The backend ("vfs" or "object") a [storage.*] or [volume.*] table names, with its arguments."""
    backend = table.get("backend")
    options: dict[str, Any]
    if backend == "vfs":
        _known(reader, where, table, _VFS_KEYS | extra_keys)
        path = _string(reader, where, table, "path", required=True)
        options = {
            "read_only": _bool(reader, where, table, "read-only"),
            "fsync": _bool(reader, where, table, "fsync", default=True),
        }
        return "vfs", (path,), options
    if backend in ("minio", "s3"):
        _known(reader, where, table, _OBJECT_KEYS | extra_keys)
        bucket = _string(reader, where, table, "bucket", required=True)
        args = (_endpoint(reader, where, table, env), bucket, _string(reader, where, table, "prefix") or "")
        options = {
            "read_only": _bool(reader, where, table, "read-only"),
            "multipart_threshold": _size(reader, where, table, "multipart-threshold", DEFAULT_MULTIPART_THRESHOLD),
            "part_size": _size(reader, where, table, "part-size", DEFAULT_PART_SIZE),
        }
        return "object", args, options
    if backend is None:
        raise reader.error(where, None, 'missing backend = "vfs" | "minio" | "s3"')
    raise reader.error(where, "backend", f'unknown backend {backend!r} (known: "vfs", "minio", "s3")')


def _endpoint(reader: _Reader, where: str, table: Mapping[str, Any], env: Mapping[str, str]) -> S3Endpoint:
    endpoint_url = _string(reader, where, table, "endpoint") or env.get("AWS_ENDPOINT_URL")
    if not endpoint_url:
        raise reader.error(where, "endpoint", "missing (or set AWS_ENDPOINT_URL)")
    credentials = _credentials(reader, where, table.get("options", {}), env)
    region = _string(reader, where, table, "region") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    try:
        return S3Endpoint(endpoint_url, credentials, region)
    except ConfigError as exc:
        raise reader.error(where, "endpoint", exc.message) from None


def _volume(reader: _Reader, name: str, table: dict[str, Any], env: Mapping[str, str]) -> AbstractVolume:
    where = f"volume.{name}"
    quotas = _quotas(reader, where, table.get("quotas", {}))
    read_only_vfolders = _vfolder_ids(reader, where, table)
    backend, args, options = _backend(reader, where, table, env, _VOLUME_KEYS)
    kind = VFSVolume if backend == "vfs" else ObjectVolume
    return kind(name, *args, quotas=quotas, read_only_vfolders=read_only_vfolders, **options)


def _quotas(reader: _Reader, where: str, table: Any) -> dict[str, int | None]:
    if not isinstance(table, dict):
        raise reader.error(where, "quotas", 'must be a table of QUOTA_SCOPE = "SIZE", e.g. [volume.NAME.quotas]')
    quotas: dict[str, int | None] = {}
    for scope, value in table.items():
        try:
            check_scope(scope)
        except ConfigError as exc:
            raise reader.error(f"{where}.quotas", scope, exc.message) from None
        quotas[scope] = None if value == "unlimited" else _size(reader, f"{where}.quotas", table, scope, 0)
    return quotas


def _vfolder_ids(reader: _Reader, where: str, table: Mapping[str, Any]) -> list[VFolderID]:
    values = table.get("read-only-vfolders", [])
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise reader.error(where, "read-only-vfolders", 'must be a list of "QUOTA_SCOPE/FOLDER_ID" strings')
    try:
        return [VFolderID.parse(v) for v in values]
    except ConfigError as exc:
        raise reader.error(where, "read-only-vfolders", exc.message) from None


def _known(reader: _Reader, where: str, table: Mapping[str, Any], allowed: set[str]) -> None:
    for key in table:
        if key not in allowed:
            raise reader.error(where, key, f"unknown key (known: {', '.join(sorted(allowed))})")


def _string(reader: _Reader, where: str, table: Mapping[str, Any], key: str, *, required: bool = False) -> str | None:
    value = table.get(key)
    if value is None:
        if required:
            raise reader.error(where, None, f'missing {key} = "..."')
        return None
    if not isinstance(value, str) or not value:
        raise reader.error(where, key, "must be a non-empty string")
    return value


def _bool(reader: _Reader, where: str, table: Mapping[str, Any], key: str, *, default: bool = False) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise reader.error(where, key, "must be true or false")
    return value


def _size(reader: _Reader, where: str, table: Mapping[str, Any], key: str, default: int) -> int:
    value = table.get(key, default)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _SIZE.match(value) if isinstance(value, str) else None
    if match is None:
        raise reader.error(where, key, 'must be a size in bytes or like "64MiB"')
    unit = (match[2] or "").upper()[:1]
    return int(match[1]) << {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[unit]


def _credentials(reader: _Reader, where: str, options: Any, env: Mapping[str, str]) -> S3Credentials | None:
    table = f"{where}.options"
    if not isinstance(options, dict):
        raise reader.error(where, "options", "must be a table, e.g. [storage.NAME.options]")
    values: dict[str, str] = {}
    for key, value in options.items():
        canonical = _OPTION_KEYS.get(key)
        if canonical is None:
            raise reader.error(table, key, f"unknown option (known: {', '.join(sorted(_OPTION_KEYS))})")
        if not isinstance(value, str) or not value:
            # The value may be a secret: name the key only.
            raise reader.error(table, key, "must be a non-empty string")
        values[canonical] = value
    if "access-key" in values or "secret-key" in values:
        if "access-key" not in values or "secret-key" not in values:
            raise reader.error(table, None, "give both access-key and secret-key")
        return S3Credentials(values["access-key"], values["secret-key"], values.get("session-token"))
    return S3Credentials.from_env(dict(env))
