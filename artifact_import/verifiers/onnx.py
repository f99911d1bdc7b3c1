"""ONNX: external tensor data must stay beside the model.

An ONNX model may keep tensors in other files, named by ``location`` in each
tensor's ``external_data``. ``onnx.load`` opens that path relative to the
model; a location that is absolute or climbs out (``../../etc/shadow``,
``/root/.ssh/id_rsa``) makes loading the model read, and often serve back,
a file the model's author chose. The protobuf is walked (graph, initializers,
sparse initializers, node attributes, subgraphs, functions) without holding
more than one field header at a time; raw tensor bytes are skipped.
"""

from __future__ import annotations

import posixpath

from ..model import ArtifactFile, Verdict
from .base import Verifier, VerifierSession
from .policy import Policy, judge
from .reader import ChunkFeed, Limited, Reader, Unscannable
from .threaded import ThreadedSession

MAX_DEPTH = 64
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


class OnnxVerifier(Verifier):
    name = "onnx"

    def __init__(self, policy: Policy | str = Policy.FAIL) -> None:
        self.policy = Policy.parse(policy, "format")

    def applies_to(self, file: ArtifactFile) -> bool:
        return self.policy is not Policy.OFF and file.path.lower().endswith(".onnx")

    def start(self, file: ArtifactFile) -> VerifierSession:
        return _OnnxSession(self, file)


class _OnnxSession(ThreadedSession[list[str]]):
    def __init__(self, verifier: OnnxVerifier, file: ArtifactFile) -> None:
        self._v = verifier
        super().__init__(file)

    def parse(self, feed: ChunkFeed) -> list[str]:
        locations: list[str] = []
        _walk(feed, "model", locations, 0)
        return locations

    def verdict(self, result: list[str] | None, error: BaseException | None) -> Verdict:
        locations = result or []
        findings = [f"external data location {loc[:200]!r} {why}" for loc in locations if (why := escapes(loc))]
        data = {"external_data": sorted(set(locations))[:64]}
        clean = f"{len(locations)} external data reference(s), all beside the model"
        if error is not None and not findings:
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


def _skip_group(r: Reader, number: int, depth: int) -> None:
    """A (deprecated) group in a field protobuf does not know: skipped, as protobuf's own parser does."""
    if depth > MAX_DEPTH:
        raise Unscannable(f"groups nested more than {MAX_DEPTH} deep")
    while (tag := _varint(r)) is not None:
        inner, wire = tag >> 3, tag & 7
        if wire == 4:
            if inner != number:
                raise Unscannable(f"group {number} ended as {inner}")
            return
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
            _skip_group(r, inner, depth + 1)
        else:
            raise Unscannable(f"wire type {wire} in field {inner}")
    raise EOFError(f"group {number} never ends")


def _walk(r: Reader, kind: str, locations: list[str], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise Unscannable(f"messages nested more than {MAX_DEPTH} deep")
    fields = _KINDS.get(kind, _ENTRY)
    key = value = None
    while (tag := _varint(r)) is not None:
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            _varint(r)
        elif wire == 1:
            r.read_exact(8, "fixed64")
        elif wire == 5:
            r.read_exact(4, "fixed32")
        elif wire == 3:
            _skip_group(r, number, depth)
        elif wire == 2:
            length = _varint(r)
            if length is None:
                raise EOFError("truncated field length")
            body = Limited(r, length)
            child = fields.get(number)
            if kind == "entry" and child in ("key", "value") and length <= 1 << 16:
                text = body.read_exact(length, "string").decode("utf-8", "replace")
                key, value = (text, value) if child == "key" else (key, text)
            elif child is not None and kind != "entry":
                _walk(body, child, locations, depth + 1)
            body.drain()
        else:
            raise Unscannable(f"wire type {wire} in field {number}")
    if kind == "entry" and key == "location" and value is not None:
        locations.append(value)
