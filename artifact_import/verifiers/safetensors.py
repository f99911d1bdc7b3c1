"""safetensors: the header must describe the file exactly.

Format: 8 bytes little-endian header length N, N bytes of JSON mapping each
tensor name to ``{dtype, shape, data_offsets: [begin, end]}`` (plus an
optional ``__metadata__`` of strings), then the data. A loader trusts the
offsets; a header that points outside the file, overlaps tensors, disagrees
with the shapes or is truncated is refused.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

from ..model import ArtifactFile, Verdict
from .base import Verifier, VerifierSession

#: safetensors itself refuses headers over 100 MB.
MAX_HEADER = 100_000_000
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "F4": 1,  # two per byte: see _tensor_problem
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}  # fmt: skip


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
        try:
            header = json.loads(bytes(self._head[8 : 8 + length]))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return f"header is not JSON ({exc})", {}
        if not isinstance(header, dict):
            return "header is not a JSON object", {}
        data_size = self._size - 8 - length
        spans: list[tuple[int, int, str]] = []
        for name, info in header.items():
            if name == "__metadata__":
                if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                    return "__metadata__ must map strings to strings", {}
                continue
            problem = _tensor_problem(name, info, data_size)
            if problem:
                return problem, {}
            spans.append((info["data_offsets"][0], info["data_offsets"][1], name))
        spans.sort()
        position = 0
        for begin, end, name in spans:
            if begin != position:
                what = "overlaps the tensor before it" if begin < position else f"leaves a gap at byte {position}"
                return f"tensor {name!r} {what}", {}
            position = end
        if position != data_size:
            return f"tensors cover {position} bytes of a {data_size}-byte data section", {}
        return None, {"tensors": len(spans), "header_bytes": length}


def _tensor_problem(name: str, info: Any, data_size: int) -> str | None:
    if not isinstance(info, dict):
        return f"tensor {name!r}: not an object"
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        return f"tensor {name!r}: unknown dtype {dtype!r}"
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        return f"tensor {name!r}: shape must be a list of non-negative integers"
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        return f"tensor {name!r}: data_offsets must be [begin, end] with 0 <= begin <= end"
    if offsets[1] > data_size:
        return f"tensor {name!r}: data ends at {offsets[1]}, past the {data_size}-byte data section"
    count = math.prod(shape)
    expected = math.ceil(count / 2) if dtype == "F4" else count * DTYPE_SIZES[dtype]
    if offsets[1] - offsets[0] != expected:
        return f"tensor {name!r}: {offsets[1] - offsets[0]} bytes for shape {shape} of {dtype} (expected {expected})"
    return None
