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

The header is read as it streams, entry by entry, and what is kept per tensor
is three numbers: a 100 MB header costs tens of MB, not the gigabytes of a
parsed JSON tree (bounds: :data:`MAX_TENSORS`, :data:`MAX_ENTRY`).
"""

from __future__ import annotations

import codecs
import itertools
import json
import struct
from array import array
from hashlib import blake2b
from typing import Any

from ..model import ArtifactFile, Verdict
from .base import Verifier, VerifierSession
from .reader import Bound, Limited, Reader
from .threaded import ThreadedSession

#: safetensors itself refuses headers over 100 MB.
MAX_HEADER = 100_000_000
#: Tensors one header may describe (the largest real checkpoints hold a few hundred thousand).
MAX_TENSORS = 1 << 20
#: Bytes of JSON one entry of the header may take (a tensor's description, or ``__metadata__``).
MAX_ENTRY = 16 << 20
#: Bytes of tensor names kept to name a tensor in a refusal; past it, tensors are named by number.
_NAME_BYTES = 4 << 20
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
_WHITESPACE = " \t\n\r"


class Invalid(Exception):
    """The header is not one safetensors would load."""


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


#: The C string scanner json.loads uses (not in the typeshed stubs).
_scanstring: Any = getattr(json.decoder, "scanstring")  # noqa: B009
_DECODER = json.JSONDecoder(object_pairs_hook=_pairs, parse_constant=_no_constant)


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


class _SafetensorsSession(ThreadedSession["_Header"]):
    def __init__(self, file: ArtifactFile) -> None:
        self._size = 0
        super().__init__(file)

    async def feed(self, chunk: bytes) -> None:
        self._size += len(chunk)  # the data section's size: counted here, past where the parser stops
        await super().feed(chunk)

    def parse(self, feed: Reader) -> _Header:
        head = feed.read(8)
        if len(head) < 8:
            raise Invalid("the 8-byte header length is missing")
        length = struct.unpack("<Q", head)[0]
        if length > MAX_HEADER:
            raise Invalid(f"header length {length} is over the {MAX_HEADER} bytes safetensors allows")
        header = _Header(length)
        try:
            header.read(Limited(feed, length))
        except EOFError:
            raise Invalid(f"header length {length} runs past the end of the file (truncated?)") from None
        return header

    def verdict(self, result: _Header | None, error: BaseException | None) -> Verdict:
        name = SafetensorsVerifier.name
        if error is not None:
            if isinstance(error, Invalid | Bound):
                detail = str(error)
                if "8-byte header length" in detail:
                    detail = f"only {self._size} bytes; {detail}"
                elif "runs past the end" in detail:
                    detail = detail.replace("the file", f"the {self._size}-byte file")
            else:
                detail = f"scanner error {type(error).__name__}: {error}"
            return Verdict(name, False, f"invalid safetensors: {detail}", {})
        assert result is not None
        problem = result.check(self._size - 8 - result.length)
        if problem:
            return Verdict(name, False, f"invalid safetensors: {problem}", {})
        data = {"tensors": result.count, "header_bytes": result.length}
        return Verdict(name, True, f"header valid ({result.count} tensors)", data)


class _Header:
    """The header read entry by entry; per tensor, its span and index, and its name while names fit."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.begins, self.ends = array("Q"), array("Q")
        self.keys = array("Q")  # a digest of each name: the last entry of a name wins, as in safetensors
        self.names: list[str] = []
        self._name_bytes = 0
        self._buf = ""
        self._pos = 0
        self._reader: Reader | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self._ended = False
        #: Tensors once each (known after :meth:`check`).
        self.count = 0

    # -- the text, decoded as it arrives ---------------------------------------------------------------

    def _more(self) -> bool:
        """Append the next block of text; False at the end of the header."""
        if self._ended:
            return False
        assert self._reader is not None
        block = self._reader.read(1 << 20)
        try:
            text = self._decoder.decode(block, final=not block)
        except UnicodeDecodeError as exc:
            raise Invalid(f"header is not UTF-8 ({exc.reason})") from None
        self._ended = not block
        self._buf = self._buf[self._pos :] + text
        self._pos = 0
        return True

    def _peek(self) -> str:
        while self._pos < len(self._buf) or self._more():
            while self._pos < len(self._buf) and self._buf[self._pos] in _WHITESPACE:
                self._pos += 1
            if self._pos < len(self._buf):
                return self._buf[self._pos]
        return ""

    def _value(self, what: str, limit: int, scan: Any) -> Any:
        """``scan(buf, pos)`` -> (value, end), with more text read until the value is whole."""
        while True:
            error: json.JSONDecodeError | None = None
            try:
                value, end = scan(self._buf, self._pos)
            except json.JSONDecodeError as exc:
                value, end, error = None, len(self._buf), exc
            except RecursionError:
                raise Invalid("header is not JSON (nested too deeply)") from None
            except ValueError as exc:
                raise Invalid(f"header is not JSON ({exc})") from None
            if end < len(self._buf) or self._ended:
                if error is not None:
                    raise Invalid(f"header is not JSON ({error.msg} at header byte ~{error.pos})")
                self._pos = end
                return value
            if len(self._buf) - self._pos > limit:
                raise Bound(f"{what} of more than {limit} bytes in the header (the scanner's bound)")
            # Cut by the end of the text read so far: read on, at least as much again, and parse it anew.
            want = 2 * max(len(self._buf) - self._pos, 1 << 20)
            while len(self._buf) - self._pos < want and self._more():
                pass

    def _key(self) -> str:
        def scan(buf: str, pos: int) -> tuple[str, int]:
            if buf[pos] != '"':
                raise json.JSONDecodeError("Expecting property name enclosed in double quotes", buf, pos)
            return _scanstring(buf, pos + 1, True)  # type: ignore[no-any-return]

        return str(self._value("a name", 1 << 16, scan))

    # -- the header ------------------------------------------------------------------------------------

    def read(self, reader: Reader) -> None:
        self._reader = reader
        first = self._peek()
        if first != "{":
            self._not_an_object()
        self._pos += 1
        seen_metadata = False
        if self._peek() == "}":
            self._pos += 1
        else:
            while True:
                key = self._key()
                if self._peek() != ":":
                    raise Invalid("header is not JSON (Expecting ':' delimiter)")
                self._pos += 1
                self._peek()
                value = self._value("an entry", MAX_ENTRY, _DECODER.raw_decode)
                if _surrogate(key) or _surrogate(value):
                    raise Invalid("header holds a lone UTF-16 surrogate escape")
                if key == "__metadata__":
                    if seen_metadata:
                        raise Invalid("__metadata__ appears twice")
                    seen_metadata = True
                    if value is not None and (
                        not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values())
                    ):
                        raise Invalid("__metadata__ must map strings to strings")
                else:
                    self._tensor(key, value)
                sep = self._peek()
                self._pos += 1
                if sep == "}":
                    break
                if sep != ",":
                    raise Invalid("header is not JSON (Expecting ',' delimiter)")
                self._peek()
        if self._peek():
            raise Invalid("header is not JSON (Extra data after the object)")

    def _not_an_object(self) -> None:
        self._value("the header", MAX_ENTRY, _DECODER.raw_decode)
        if self._peek():
            raise Invalid("header is not JSON (Extra data)")
        raise Invalid("header is not a JSON object")

    def _tensor(self, name: str, info: Any) -> None:
        problem = _tensor_problem(name, info)
        if problem:
            raise Invalid(problem)
        if len(self.keys) >= MAX_TENSORS:
            raise Bound(f"more than {MAX_TENSORS} tensors in one header (the scanner's bound)")
        begin, end = info["data_offsets"]
        count = _elements(info["shape"])
        bits = count * DTYPE_BITS[info["dtype"]]
        if count >= _USIZE or bits >= _USIZE:
            raise Invalid(f"tensor {name!r}: its size overflows")
        if bits % 8:
            raise Invalid(f"tensor {name!r}: {count} elements of {info['dtype']} do not fill whole bytes")
        if end < begin:
            raise Invalid(f"tensor {name!r}: data ends before it begins")
        if end - begin != bits // 8:
            shape = info["shape"]
            raise Invalid(
                f"tensor {name!r}: {end - begin} bytes for shape {shape} of {info['dtype']} (expected {bits // 8})"
            )
        self.begins.append(begin)
        self.ends.append(end)
        self.keys.append(int.from_bytes(blake2b(name.encode("utf-8", "surrogatepass"), digest_size=8).digest()))
        if self._name_bytes < _NAME_BYTES:
            self._name_bytes += len(name)
            self.names.append(name)

    def _last_of_each_name(self) -> list[int] | None:
        """The entries that count when a name is given twice (the last, as safetensors' map keeps), or None
        when every name is given once (the usual case, found without a map of every name)."""
        ordered = sorted(self.keys)
        if all(a != b for a, b in itertools.pairwise(ordered)):
            return None
        del ordered
        last: dict[int, int] = {}
        for index, key in enumerate(self.keys):
            last[key] = index
        return sorted(last.values())

    def _name(self, index: int) -> str:
        return repr(self.names[index]) if index < len(self.names) else f"#{index + 1}"

    def check(self, data_size: int) -> str | None:
        """The spans against each other and the data section, as safetensors validates them."""
        keep = self._last_of_each_name()
        self.count = len(keep) if keep is not None else len(self.keys)
        begins, ends = self.begins, self.ends
        # By (begin, end): a zero-length tensor sorts before the one that starts where it sits.
        order = sorted(
            keep if keep is not None else range(len(begins)), key=lambda i: 2 * begins[i] + (ends[i] > begins[i])
        )
        del keep
        position = 0
        for i in order:
            begin, end = self.begins[i], self.ends[i]
            if begin != position:
                what = "overlaps the tensor before it" if begin < position else f"leaves a gap at byte {position}"
                return f"tensor {self._name(i)} {what}"
            if end > data_size:
                return f"tensor {self._name(i)}: data ends at {end}, past the {data_size}-byte data section"
            position = end
        if position != data_size:
            return f"tensors cover {position} bytes of a {data_size}-byte data section"
        return None


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
