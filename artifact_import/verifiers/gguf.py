"""GGUF: a header llama.cpp and its bindings can read safely, and a chat template that runs no code.

The header (magic, version, counts, key/value pairs, tensor infos) is read as
``gguf`` readers do; malformed lengths, unknown value types, absurd counts,
tensors with too many dimensions or misaligned offsets are refused: readers
written in C have had overflows in exactly these fields. The chat template is
Jinja rendered by the loader (``llama-cpp-python`` has had a sandbox escape
through it): a template reaching for Python internals (``__class__``,
``__globals__``, ``__subclasses__``...) is refused.

Strings are checked as they stream past, never held: a header of 60 MiB strings
costs a block, not the strings (templates are searched window by window).
"""

from __future__ import annotations

import codecs
import re
import struct
from hashlib import blake2b
from typing import Any

import attrs

from ..model import ArtifactFile, Verdict
from .base import VerifierSession
from .policy import FormatVerifier, judge
from .reader import Bound, Reader, Unscannable
from .threaded import ThreadedSession

MAX_COUNT = 1 << 24
#: Key/value pairs (a real model has a few dozen; the vocabulary is one array value).
MAX_KEYS = 1 << 16
MAX_STRING = 64 << 20
#: A key's name (a real one is tens of bytes).
MAX_KEY = 1 << 16
MAX_DIMS = 4
#: Value types: fixed sizes (struct formats), 8 string, 9 array.
_FIXED = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<B", 10: "<Q", 11: "<q", 12: "<d"}
_TEMPLATE_DANGER = re.compile(r"__\w+__|\bimport\b|\bos\.|\bsubprocess\b|\beval\b|\bexec\b|\bpopen\b")
_HINT = "Use --format-policy warn to import it anyway"


@attrs.define
class GgufHeader:
    version: int
    tensors: int
    #: The first numeric values (strings and arrays are checked as they pass, not kept).
    keys: dict[str, Any]
    findings: list[str]
    key_count: int = 0


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
        data = {"version": result.version, "tensors": result.tensors, "keys": result.key_count} if result else {}
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
    if tensors > MAX_COUNT or kvs > MAX_KEYS:
        raise Bound(f"{tensors} tensors and {kvs} keys: beyond any real model (the scanner's bound)")
    keys: dict[str, Any] = {}
    seen: set[bytes] = set()
    findings: list[str] = []
    for _ in range(kvs):
        key = _string(r, version, limit=MAX_KEY)
        digest = blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        if digest in seen:
            raise Unscannable(f"key {key[:80]!r} appears twice")
        seen.add(digest)
        template = key if key.startswith("tokenizer.chat_template") else None
        value = _value(r, version, _u(r, "<I"), depth=0, template=template, findings=findings)
        if key == "general.alignment" or len(keys) < 64:  # numbers only: strings are not kept
            keys[key] = value
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
    return GgufHeader(version, tensors, keys, findings, kvs)


def _u(r: Reader, fmt: str) -> int:
    return int(struct.unpack(fmt, r.read_exact(struct.calcsize(fmt), "GGUF header"))[0])


def _string(r: Reader, version: int, *, limit: int = MAX_STRING) -> str:
    length = _u(r, "<I" if version == 1 else "<Q")
    if length > limit:
        raise Bound(f"a string of {length} bytes (the scanner's bound: {limit})")
    raw = r.read_exact(length, "GGUF string")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Unscannable("a string that is not UTF-8") from None


def _checked_string(r: Reader, version: int, template: str | None, findings: list[str]) -> None:
    """A string value, checked block by block: UTF-8 throughout, and for a chat template, no reach for code."""
    length = _u(r, "<I" if version == 1 else "<Q")
    if length > MAX_STRING:
        raise Bound(f"a string of {length} bytes (the scanner's bound: {MAX_STRING})")
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    tail = ""
    left = length
    while True:
        block = r.read_exact(min(left, 1 << 20), "GGUF string")
        left -= len(block)
        try:
            text = decoder.decode(block, final=not left)
        except UnicodeDecodeError:
            raise Unscannable("a string that is not UTF-8") from None
        if template is not None:
            window = tail + text
            found = _TEMPLATE_DANGER.search(window)
            if found:
                findings.append(
                    f"chat template {template!r} reaches for {found.group(0)!r}, which a template never needs"
                )
                template = None
            tail = window[-64:]
        if not left:
            return


def _value(
    r: Reader, version: int, kind: int, depth: int, template: str | None = None, findings: list[str] | None = None
) -> Any:
    if kind in _FIXED:
        value = struct.unpack(_FIXED[kind], r.read_exact(struct.calcsize(_FIXED[kind]), "GGUF value"))[0]
        if kind == 7 and value not in (0, 1):
            raise Unscannable(f"a boolean of value {value}")
        return value
    if kind == 8:
        _checked_string(r, version, template, findings if findings is not None else [])
        return None
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
            _value(r, version, item, depth + 1, template, findings)
        return None
    raise Unscannable(f"unknown value type {kind}")
