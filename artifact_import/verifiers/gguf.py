"""GGUF: a header llama.cpp and its bindings can read safely, and a chat template that runs no code.

The header (magic, version, counts, key/value pairs, tensor infos) is read as
``gguf`` readers do; malformed lengths, unknown value types, absurd counts,
tensors with too many dimensions or misaligned offsets are refused: readers
written in C have had overflows in exactly these fields. The chat template is
Jinja rendered by the loader (``llama-cpp-python`` has had a sandbox escape
through it): a template reaching for Python internals (``__class__``,
``__globals__``, ``__subclasses__``...) is refused.
"""

from __future__ import annotations

import re
import struct
from typing import Any

import attrs

from ..model import ArtifactFile, Verdict
from .base import VerifierSession
from .policy import FormatVerifier, judge
from .reader import Reader, Unscannable
from .threaded import ThreadedSession

MAX_COUNT = 1 << 24
MAX_STRING = 64 << 20
MAX_DIMS = 4
#: Value types: fixed sizes (struct formats), 8 string, 9 array.
_FIXED = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<B", 10: "<Q", 11: "<q", 12: "<d"}
_TEMPLATE_DANGER = re.compile(r"__\w+__|\bimport\b|\bos\.|\bsubprocess\b|\beval\b|\bexec\b|\bpopen\b")
_HINT = "Use --format-policy warn to import it anyway"


@attrs.define
class GgufHeader:
    version: int
    tensors: int
    keys: dict[str, Any]
    findings: list[str]


class GgufVerifier(FormatVerifier):
    name = "gguf"
    suffixes = (".gguf",)

    def start(self, file: ArtifactFile) -> VerifierSession:
        return _GgufSession(self, file)


class _GgufSession(ThreadedSession[GgufHeader]):
    def __init__(self, verifier: GgufVerifier, file: ArtifactFile) -> None:
        self._v = verifier
        super().__init__(file)

    def parse(self, feed: Reader) -> GgufHeader:
        return read_header(feed)

    def verdict(self, result: GgufHeader | None, error: BaseException | None) -> Verdict:
        findings = list(result.findings) if result else []
        if error is not None:
            reason = str(error) if isinstance(error, Unscannable | EOFError) else f"{type(error).__name__}: {error}"
            findings.append(f"malformed GGUF: {reason}")
        data = {"version": result.version, "tensors": result.tensors, "keys": len(result.keys)} if result else {}
        clean = f"GGUF v{result.version} header valid ({result.tensors} tensors)" if result else ""
        return judge(self._v.name, self._v.policy, findings, clean=clean, data=data, hint=_HINT)


def read_header(r: Reader) -> GgufHeader:
    if r.read_exact(4, "magic") != b"GGUF":
        raise Unscannable("no GGUF magic")
    version = _u(r, "<I")
    if version not in (1, 2, 3):
        raise Unscannable(f"unknown GGUF version {version}")
    count_fmt = "<I" if version == 1 else "<Q"
    tensors, kvs = _u(r, count_fmt), _u(r, count_fmt)
    if tensors > MAX_COUNT or kvs > MAX_COUNT:
        raise Unscannable(f"{tensors} tensors and {kvs} keys: beyond any real model")
    keys: dict[str, Any] = {}
    for _ in range(kvs):
        key = _string(r, version)
        if key in keys:
            raise Unscannable(f"key {key!r} appears twice")
        keys[key] = _value(r, version, _u(r, "<I"), depth=0)
    findings = []
    for name in [k for k in keys if k.startswith("tokenizer.chat_template")]:
        template = keys[name]
        found = _TEMPLATE_DANGER.search(template) if isinstance(template, str) else None
        if found:
            findings.append(f"chat template {name!r} reaches for {found.group(0)!r}, which a template never needs")
    alignment = keys.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise Unscannable(f"general.alignment {alignment!r} is not a power of two")
    for _ in range(tensors):
        name = _string(r, version)
        dims = _u(r, "<I")
        if dims > MAX_DIMS:
            raise Unscannable(f"tensor {name[:80]!r} has {dims} dimensions (at most {MAX_DIMS})")
        for _ in range(dims):
            _u(r, count_fmt)
        _u(r, "<I")
        offset = _u(r, "<Q")
        if offset % alignment:
            raise Unscannable(f"tensor {name[:80]!r} at offset {offset}, not a multiple of {alignment}")
    return GgufHeader(version, tensors, keys, findings)


def _u(r: Reader, fmt: str) -> int:
    return int(struct.unpack(fmt, r.read_exact(struct.calcsize(fmt), "GGUF header"))[0])


def _string(r: Reader, version: int) -> str:
    length = _u(r, "<I" if version == 1 else "<Q")
    if length > MAX_STRING:
        raise Unscannable(f"a string of {length} bytes")
    raw = r.read_exact(length, "GGUF string")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Unscannable("a string that is not UTF-8") from None


def _value(r: Reader, version: int, kind: int, depth: int) -> Any:
    if kind in _FIXED:
        value = struct.unpack(_FIXED[kind], r.read_exact(struct.calcsize(_FIXED[kind]), "GGUF value"))[0]
        if kind == 7 and value not in (0, 1):
            raise Unscannable(f"a boolean of value {value}")
        return value
    if kind == 8:
        return _string(r, version)
    if kind == 9 and depth < 2:
        item, count = _u(r, "<I"), _u(r, "<I" if version == 1 else "<Q")
        if count > MAX_COUNT * 4:
            raise Unscannable(f"an array of {count} items")
        if item in _FIXED:
            size = struct.calcsize(_FIXED[item]) * count
            if r.skip(size) < size:
                raise EOFError("truncated GGUF array")
            return None
        for _ in range(count):
            _value(r, version, item, depth + 1)
        return None
    raise Unscannable(f"unknown value type {kind}")
