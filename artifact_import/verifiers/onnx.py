"""ONNX: external tensor data must stay beside the model.

An ONNX model may keep tensors in other files, named by ``location`` in each
tensor's ``external_data``. ``onnx.load`` opens that path relative to the
model; a location that is absolute or climbs out (``../../etc/shadow``,
``/root/.ssh/id_rsa``) makes loading the model read, and often serve back,
a file the model's author chose. The protobuf is walked (graph, initializers,
sparse initializers, node attributes, subgraphs, functions) without holding
more than one field header at a time; raw tensor bytes are skipped. It goes
deeper than protobuf's own parser (which stops at 100 nested messages), so
whatever ``onnx.load`` can read is read here; past that, the model is refused
naming the bound rather than passed unread.
"""

from __future__ import annotations

import posixpath

from ..model import ArtifactFile, Verdict
from .base import VerifierSession
from .policy import FormatVerifier, judge
from .reader import Bound, Limited, Reader, Unscannable
from .threaded import ThreadedSession

#: Nested messages (and groups) followed; protobuf's parsers stop at 100.
MAX_DEPTH = 128
#: Different external data files one model may name (a model keeps its tensors in one file, or one per tensor).
MAX_LOCATIONS = 65536
_HINT = "Use --format-policy warn to import it anyway"

# field numbers of the messages that can hold a TensorProto, and where
_MODEL = {7: "graph", 25: "function"}
_GRAPH = {1: "node", 5: "tensor", 15: "sparse"}
_FUNCTION = {7: "node"}
_NODE = {5: "attribute"}
_ATTRIBUTE = {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"}
_SPARSE = {1: "tensor", 2: "tensor"}
_TENSOR = {13: "entry"}
_ENTRY = {1: "key", 2: "value"}
_KINDS = {
    "model": _MODEL,
    "graph": _GRAPH,
    "function": _FUNCTION,
    "node": _NODE,
    "attribute": _ATTRIBUTE,
    "sparse": _SPARSE,
    "tensor": _TENSOR,
}


class OnnxVerifier(FormatVerifier):
    name = "onnx"
    suffixes = (".onnx",)

    def start(self, file: ArtifactFile) -> VerifierSession:
        return _OnnxSession(self, file)


class _OnnxSession(ThreadedSession[list[str]]):
    def __init__(self, verifier: OnnxVerifier, file: ArtifactFile) -> None:
        self._v = verifier
        super().__init__(file)

    def parse(self, feed: Reader) -> list[str]:
        locations: list[str] = []
        _walk(feed, "model", locations, 0)
        return locations

    def verdict(self, result: list[str] | None, error: BaseException | None) -> Verdict:
        locations = result or []
        findings = [f"external data location {loc[:200]!r} {why}" for loc in locations if (why := escapes(loc))]
        data = {"external_data": sorted(set(locations))[:64]}
        clean = f"{len(locations)} external data reference(s), all beside the model"
        if isinstance(error, Bound) or (error is not None and not isinstance(error, Unscannable | EOFError)):
            findings.append(f"cannot read the ONNX model: {error}")
        elif error is not None and not findings:
            # Not protobuf: onnx.load refuses it too, so no external file can be opened through it.
            clean = f"not a readable ONNX protobuf ({error}); onnx.load would refuse it as well"
        return judge(self._v.name, self._v.policy, findings, clean=clean, data=data, hint=_HINT)


def escapes(location: str) -> str | None:
    """Why ``location`` does not name a file in the model's folder, or None."""
    if not location or "\x00" in location:
        return "is empty or holds a NUL"
    if location.startswith(("/", "\\")) or (len(location) > 1 and location[1] == ":"):
        return "is an absolute path"
    normal = posixpath.normpath(location.replace("\\", "/"))
    if normal == ".." or normal.startswith("../"):
        return "leaves the model's folder"
    return None


def _varint(r: Reader) -> int | None:
    shift = value = 0
    while True:
        byte = r.read(1)
        if not byte:
            if shift:
                raise EOFError("truncated varint")
            return None
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
        shift += 7
        if shift > 63:
            raise Unscannable("a varint longer than 10 bytes")


def _skip(r: Reader, number: int, wire: int, depth: int) -> None:
    """Pass over one field's value that is not followed, as protobuf's own parser does (groups included)."""
    if wire == 0:
        _varint(r)
    elif wire == 1:
        r.read_exact(8, "fixed64")
    elif wire == 5:
        r.read_exact(4, "fixed32")
    elif wire == 2:
        length = _varint(r)
        if length is None or r.skip(length) < length:
            raise EOFError("truncated field")
    elif wire == 3:
        if depth > MAX_DEPTH:
            raise Bound(f"groups nested more than {MAX_DEPTH} deep (the scanner's bound)")
        while (tag := _varint(r)) is not None:
            if tag & 7 == 4:
                if tag >> 3 != number:
                    raise Unscannable(f"group {number} ended as {tag >> 3}")
                return
            _skip(r, tag >> 3, tag & 7, depth + 1)
        raise EOFError(f"group {number} never ends")
    else:
        raise Unscannable(f"wire type {wire} in field {number}")


def _walk(r: Reader, kind: str, locations: list[str], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise Bound(f"messages nested more than {MAX_DEPTH} deep (the scanner's bound)")
    fields = _KINDS.get(kind, _ENTRY)
    key = value = None
    while (tag := _varint(r)) is not None:
        number, wire = tag >> 3, tag & 7
        child = fields.get(number)
        if wire != 2 or child is None:
            _skip(r, number, wire, depth)
            continue
        length = _varint(r)
        if length is None:
            raise EOFError("truncated field length")
        body = Limited(r, length)
        if kind == "entry" and length <= 1 << 16:
            text = body.read_exact(length, "string").decode("utf-8", "replace")
            key, value = (text, value) if child == "key" else (key, text)
        elif kind != "entry":
            _walk(body, child, locations, depth + 1)
        body.drain()
    if kind == "entry" and key == "location" and value is not None and value not in locations:
        if len(locations) >= MAX_LOCATIONS:
            raise Bound(f"more than {MAX_LOCATIONS} different external data locations (the scanner's bound)")
        locations.append(value)
