"""safetensors: the header must describe the file exactly, as the official library reads it.

Format: 8 bytes little-endian header length N, N bytes of JSON mapping each
tensor name to ``{dtype, shape, data_offsets: [begin, end]}`` (plus an
optional ``__metadata__`` of strings, or null), then the data. A loader trusts
the offsets; a header that points outside the file, overlaps tensors,
disagrees with the shapes or is truncated is refused.

What passes is what ``safetensors.safe_open`` accepts, no more and no less:
strict UTF-8, JSON as serde reads it (no NaN, no BOM, no lone surrogate, no
duplicated ``__metadata__`` or tensor field, integers only where sizes go,
each below 2**64), its dtype table with sub-byte types packed, no overflow, and
the data section covered exactly. The tests hold the two side by side.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from ..model import ArtifactFile, Verdict
from .base import Verifier, VerifierSession

#: safetensors itself refuses headers over 100 MB.
MAX_HEADER = 100_000_000
#: Bits per element, as safetensors' Dtype::bitsize.
DTYPE_BITS = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8,
    "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
}  # fmt: skip
_USIZE = 2**64
_FIELDS = ("dtype", "shape", "data_offsets")


class _Object(dict[str, Any]):
    """A JSON object that remembers which keys it saw twice (Python keeps the last silently)."""

    twice: frozenset[str] = frozenset()


def _pairs(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        obj.twice = frozenset(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, dict):
        return any(_surrogate(k) or _surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_surrogate(v) for v in value)
    return False


def _size(value: Any) -> bool:
    return type(value) is int and 0 <= value < _USIZE


class SafetensorsVerifier(Verifier):
    name = "safetensors"

    def applies_to(self, file: ArtifactFile) -> bool:
        return file.path.lower().endswith(".safetensors")

    def start(self, file: ArtifactFile) -> VerifierSession:
        return _SafetensorsSession(file)


class _SafetensorsSession(VerifierSession):
    def __init__(self, file: ArtifactFile) -> None:
        self._file = file
        self._head = bytearray()
        self._needed = 8
        self._size = 0

    async def feed(self, chunk: bytes) -> None:
        offset = 0
        while len(self._head) < self._needed and offset < len(chunk):
            take = chunk[offset : offset + self._needed - len(self._head)]
            self._head += take
            offset += len(take)
            if self._needed == 8 and len(self._head) == 8:
                # Now the header's own length is known; keep reading it from this same chunk.
                length = struct.unpack("<Q", self._head)[0]
                self._needed = 8 + min(length, MAX_HEADER + 1)
        self._size += len(chunk)

    async def finish(self) -> Verdict:
        problem, data = self._check()
        if problem:
            return Verdict(SafetensorsVerifier.name, False, f"invalid safetensors: {problem}", data)
        return Verdict(SafetensorsVerifier.name, True, f"header valid ({data['tensors']} tensors)", data)

    def _check(self) -> tuple[str | None, dict[str, Any]]:
        if self._size < 8:
            return f"only {self._size} bytes; the 8-byte header length is missing", {}
        length = struct.unpack("<Q", self._head[:8])[0]
        if length > MAX_HEADER:
            return f"header length {length} is over the {MAX_HEADER} bytes safetensors allows", {}
        if 8 + length > self._size:
            return f"header length {length} runs past the end of the {self._size}-byte file (truncated?)", {}
        header, problem = _parse(bytes(self._head[8 : 8 + length]))
        if problem:
            return problem, {}
        problem, tensors = _validate(header, self._size - 8 - length)
        if problem:
            return problem, {}
        return None, {"tensors": tensors, "header_bytes": length}


def _parse(raw: bytes) -> tuple[Any, str | None]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"header is not UTF-8 ({exc.reason} at byte {exc.start})"
    try:
        header = json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constant)
    except RecursionError:
        return None, "header is not JSON (nested too deeply)"
    except ValueError as exc:
        return None, f"header is not JSON ({exc})"
    if not isinstance(header, dict):
        return None, "header is not a JSON object"
    if _surrogate(header):
        return None, "header holds a lone UTF-16 surrogate escape"
    if "__metadata__" in getattr(header, "twice", ()):
        return None, "__metadata__ appears twice"
    return header, None


def _validate(header: dict[str, Any], data_size: int) -> tuple[str | None, int]:
    spans: list[tuple[int, int, str, int]] = []
    for name, info in header.items():
        if name == "__metadata__":
            if info is not None and (not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values())):
                return "__metadata__ must map strings to strings", 0
            continue
        problem = _tensor_problem(name, info)
        if problem:
            return problem, 0
        begin, end = info["data_offsets"]
        spans.append((begin, end, name, _elements(info["shape"])))
    spans.sort()
    position = 0
    for begin, end, name, count in spans:
        if begin != position or end < begin:
            what = "overlaps the tensor before it" if begin < position else f"leaves a gap at byte {position}"
            return f"tensor {name!r} {what}" if end >= begin else f"tensor {name!r}: data ends before it begins", 0
        if end > data_size:
            return f"tensor {name!r}: data ends at {end}, past the {data_size}-byte data section", 0
        dtype = header[name]["dtype"]
        bits = count * DTYPE_BITS[dtype]
        if count >= _USIZE or bits >= _USIZE:
            return f"tensor {name!r}: its size overflows", 0
        if bits % 8:
            return f"tensor {name!r}: {count} elements of {dtype} do not fill whole bytes", 0
        if end - begin != bits // 8:
            shape = header[name]["shape"]
            return f"tensor {name!r}: {end - begin} bytes for shape {shape} of {dtype} (expected {bits // 8})", 0
        position = end
    if position != data_size:
        return f"tensors cover {position} bytes of a {data_size}-byte data section", 0
    return None, len(spans)


def _elements(shape: list[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
        if count >= _USIZE:
            return _USIZE  # overflow: reported once the tensor is reached
    return count


def _tensor_problem(name: str, info: Any) -> str | None:
    if not isinstance(info, dict):
        return f"tensor {name!r}: not an object"
    twice = set(getattr(info, "twice", ())) & set(_FIELDS)
    if twice:
        return f"tensor {name!r}: field {sorted(twice)[0]!r} appears twice"
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        return f"tensor {name!r}: unknown dtype {dtype!r}"
    if not isinstance(shape, list) or not all(_size(d) for d in shape):
        return f"tensor {name!r}: shape must be a list of non-negative integers"
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_size(o) for o in offsets):
        return f"tensor {name!r}: data_offsets must be [begin, end] with 0 <= begin <= end"
    return None
