"""What a file is, by its name and its bytes, and every pickle a loader would run from it.

Which bytes are read as a pickle, and how strictly, is :mod:`.filekinds`'
call: what a loader would unpickle (a loader's name, a PROTO opcode, a
container's pickle member) is read strictly; a known format or text under any
other name is not a pickle. Containers are opened whatever their name, the way
their loaders open them: plain pickles and sequences of them (PyTorch's legacy
layout: five pickles, then raw storages), zip archives (``torch.save``,
TorchScript, ``.npz``, ``.keras``), PyTorch's oldest tar layout, numpy ``.npy``
(object arrays carry a pickle), joblib (raw array bytes inside the pickle
stream), and gzip/bz2/xz/lzma/zlib-compressed forms of any of these. Where a
file a loader opens is a container, its raw bytes are read as a pickle too
(in a reading of their own, :mod:`.fanout`), since ``pickle.load`` does not
care that ``torch.load`` sees a tar or ``joblib.load`` a bz2 stream. 7z and lz4
cannot be read here: under a loader's name they are refused rather than passed
unread.

The verdict's rule is the unpickler's own: a stream that stops being a pickle
before any import could not have run anything, so it is data; one that stops
after is refused, since ``pickle.load`` runs what it read before it failed.
Every bound of the scan (objects, imports, pickles in a row, nesting,
expansion, CPU time) is a refusal that names it.
"""

from __future__ import annotations

import ast
import math
import re
import struct
from collections.abc import Callable
from typing import Any

import attrs

from .fanout import fan_out
from .filekinds import Mode, inner_name, loader_named, mode_for, proto_start, torch_storage
from .pickleops import OPAQUE, OPCODE_BYTES, Call, Container, Global, Walk, walk
from .reader import Bound, Budget, Decompressed, Limited, Reader, Unscannable
from .zipscan import scan_zip

#: torch.save's legacy layout starts with a pickle of this number.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
#: Containers inside containers deeper than this are refused (a zip of a gzip of a tar of a zip...).
MAX_DEPTH = 4
#: Kept for callers of the earlier API: expansion is bounded by the scan's :class:`Budget`.
EXPAND_LIMIT = 1 << 40
#: numpy's own header bound is 10,000 bytes (lifted with allow_pickle); ours, for any header.
MAX_NPY_HEADER = 1 << 20
#: Pickles one after another in one stream (torch's legacy layout has five; joblib one per object array).
MAX_PICKLES = 10_000
#: Pickles whose imports the verdict lists one by one; the rest are counted.
MAX_RECORDS = 64
#: Different names all the pickles of one file may import.
MAX_IMPORTS = 4096
_STORAGE_ELEMENT = {
    "Float": 4, "Double": 8, "Half": 2, "BFloat16": 2, "Long": 8, "Int": 4, "Short": 2, "Char": 1, "Byte": 1,
    "Bool": 1, "ComplexFloat": 8, "ComplexDouble": 16, "QInt8": 1, "QUInt8": 1, "QInt32": 4,
}  # fmt: skip
_NUMPY_CHAR = {
    "?": 1, "b": 1, "B": 1, "h": 2, "H": 2, "i": 4, "I": 4, "l": 8, "L": 8, "q": 8, "Q": 8, "p": 8, "P": 8,
    "e": 2, "f": 4, "d": 8, "g": 16, "F": 8, "D": 16, "G": 32, "M": 8, "m": 8,
}  # fmt: skip
_TYPESTR = re.compile(r"^[<>|=]?([a-zA-Z?])(\d*)")


@attrs.define
class Findings:
    """What a scan saw: the formats met and, per pickle, what it imports (bounded, whatever the file)."""

    formats: list[str] = attrs.field(factory=list)
    #: (where, imports) for the first :data:`MAX_RECORDS` pickles, in file order.
    pickles: list[tuple[str, list[str]]] = attrs.field(factory=list)
    #: How many pickles there were in all.
    count: int = 0
    #: A TorchScript archive: its ``__torch__`` classes come from its own code, not from Python imports.
    torchscript: bool = False
    _imports: dict[str, None] = attrs.field(factory=dict)

    @property
    def imports(self) -> list[str]:
        """Every name any pickle imports, once each."""
        return list(self._imports)

    def add(self, where: str, imports: list[str]) -> None:
        self.count += 1
        if len(self.pickles) < MAX_RECORDS:
            self.pickles.append((where, imports))
        for name in imports:
            if name not in self._imports:
                if len(self._imports) >= MAX_IMPORTS:
                    raise Bound(f"{where}: pickles importing more than {MAX_IMPORTS} different names")
                self._imports[name] = None

    def merge(self, other: Findings) -> None:
        self.formats += [k for k in other.formats if k not in self.formats][:64]
        for where, names in other.pickles:
            self.add(where, names)
        self.count += other.count - len(other.pickles)
        for name in other.imports:
            self._imports.setdefault(name, None)
        self.torchscript = self.torchscript or other.torchscript


def scan(reader: Reader, name: str, budget: Budget | None = None) -> Findings:
    """Scan a whole file; raises ``Unscannable`` with the reason when it cannot be accounted for."""
    findings = Findings()
    own = Budget.current() is None  # outside a verifier session (tests, tools): a budget of its own
    if own:
        budget = budget or Budget()
        budget.source = reader
        budget.enter()
    try:
        try:
            _dispatch(reader, name, name, findings, 0, loader_named(name))
        except EOFError as exc:
            raise Unscannable(f"{name}: {exc}") from None
    except Unscannable as exc:
        exc.findings = findings  # type: ignore[attr-defined]  # what was seen before, for the verdict
        raise
    finally:
        if own:
            Budget.leave()
    return findings


def sniff(head: bytes) -> str:
    """The container ``head`` (a file's first bytes, 512 where there are that many) announces, or "data"."""
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head[:3] == b"BZh" and head[4:10] in (b"1AY&SY", b"\x17rE8P\x90"):
        return "bz2"
    if head[:1] == b"\x78" and head[1:2] in (b"\x01", b"\x5e", b"\x9c", b"\xda"):
        return "zlib"  # deflate, 32K window, no preset dictionary, a level zlib writes
    if head[:2] == b"ZF" and re.fullmatch(rb"0x[0-9a-f]+ *", head[2:21]) and head[21:22] == b"\x78":
        return "joblib-zlib"  # joblib < 0.10: "ZF", the length in hex padded to 19 bytes, then zlib
    if _is_tar(head):
        return "tar"
    return "data"


def label(head: bytes) -> str:
    """A name for bytes that hold no pickle, for the verdict."""
    if len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < 100_000_000:
        return "safetensors"
    for magic, kind in ((b"GGUF", "gguf"), (b"\x89HDF\r\n\x1a\n", "hdf5"), (b"\x08", "protobuf (onnx?)")):
        if head.startswith(magic):
            return kind
    return "data"


_MAGIC = (
    (b"\x93NUMPY", "npy"),
    (b"\x1f\x8b\x08", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"]\x00\x00", "lzma"),
    (b"7z\xbc\xaf\x27\x1c", "7z"),
    (b"\x04\x22\x4d\x18", "lz4"),
)


def _dispatch(r: Reader, where: str, name: str, f: Findings, depth: int, loader: bool, storage: bool = False) -> None:
    """Scan what ``r`` holds; ``name`` is what it goes by (a file, a member, a decompressed file).

    ``storage``: a torch zip's storage bytes, which torch reads raw; a container in their place (an ``.npy``
    that ``np.load`` of the zip would read by its magic) is still opened.
    """
    head = r.peek(512)
    kind = sniff(head)
    if kind == "data" and storage and not proto_start(head):
        f.formats.append("torch storage")
        return
    if kind == "data":
        mode, known = mode_for(name, head, loader=loader)
        if mode is Mode.NONE:
            f.formats.append(known or label(head))
        else:
            _scan_pickles(r, where, f, head, mode)
        return
    f.formats.append(kind)
    if kind in ("7z", "lz4"):
        if loader or proto_start(head):
            raise Unscannable(f"{where}: a {kind} archive, which the scanner cannot read (and so cannot vouch for)")
        return  # no loader opens it, and nothing here can look inside
    if kind not in ("npy", "joblib-zlib") and depth >= MAX_DEPTH:
        raise Bound(f"{where}: containers nested more than {MAX_DEPTH} deep (the scanner's bound)")

    def structure(reader: Reader, into: Findings) -> None:
        _container(reader, where, name, kind, into, depth, loader)

    if (loader or proto_start(head)) and kind != "npy" and head[0] in OPCODE_BYTES:
        # The loader that opens this by name may be pickle.load, which reads the raw bytes as a pickle.
        _both(r, f, structure, lambda reader, into: _scan_pickles(reader, f"{where} (as a pickle)", into, head))
    else:
        structure(r, f)


Reading = Callable[[Reader, Findings], None]


def _both(r: Reader, f: Findings, *readings: Reading) -> None:
    """Each reading over the same bytes at once (see :mod:`.fanout`), their findings joined in order."""
    parts = [Findings() for _ in readings]

    def bind(reading: Reading, part: Findings) -> Callable[[Reader], None]:
        return lambda reader: reading(reader, part)

    try:
        fan_out(r, [bind(reading, part) for reading, part in zip(readings, parts, strict=True)])
    finally:
        for part in parts:
            f.merge(part)


def _container(r: Reader, where: str, name: str, kind: str, f: Findings, depth: int, loader: bool) -> None:
    if kind == "zip":

        def member(reader: Reader, member_name: str) -> None:
            storage = torch_storage(member_name)
            here = f"{where}:{member_name}"
            _dispatch(reader, here, member_name, f, depth + 1, loader_named(member_name), storage)

        names = scan_zip(r, where, member)
        f.torchscript = f.torchscript or any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in names)
    elif kind == "npy":
        _scan_npy(r, where, f)
    elif kind == "tar":
        _scan_tar(r, where, f, depth)
    else:
        if kind == "joblib-zlib":
            r.read_exact(21, "joblib header")
            kind = "zlib"
        inner = inner_name(name)
        _dispatch(Decompressed(r, kind), f"{where} ({kind})", inner, f, depth + 1, loader or loader_named(inner))


def _scan_pickles(r: Reader, where: str, f: Findings, head: bytes, mode: Mode = Mode.STRICT) -> None:
    """One pickle after another until the bytes stop being one."""
    count = recorded = 0
    while r.peek(1):
        if count >= MAX_PICKLES:
            raise Bound(f"{where}: more than {MAX_PICKLES} pickles one after another (the scanner's bound)")
        here = f"{where}" if count == 0 else f"{where} (pickle {count + 1})"
        w = walk(r, after_build=_JoblibArrays(r, here, f))
        if w.error is not None:
            if not w.effects:
                break  # nothing that could have run: these bytes are data, not a pickle
            f.add(here, w.imports)
            recorded += 1
            if mode is Mode.STRICT:
                raise Unscannable(
                    f"{here}: the pickle breaks ({w.error}) after it already imported {', '.join(w.imports)}; "
                    "pickle.load would have run that"
                )
            break  # bytes no loader unpickles by name: judged by what they would import, nothing more
        count += 1
        if mode is Mode.STRICT or w.imports:
            f.add(here, w.imports)
            recorded += 1
        if count == 1 and w.value == LEGACY_MAGIC and mode is Mode.STRICT:
            # torch.save's legacy layout: four more pickles, then storage bytes torch reads by offset.
            f.formats.append("torch legacy")
            for i in range(2, 6):
                _strict_walk(r, f"{where} (pickle {i})", f)
            return
    if recorded:
        f.formats.append("pickle" if recorded == 1 else f"{recorded} pickles")
    else:
        f.formats.append(label(head))


def _strict_walk(r: Reader, where: str, f: Findings) -> Walk:
    w = walk(r, after_build=_JoblibArrays(r, where, f))
    f.add(where, w.imports)
    if w.error is not None:
        raise Unscannable(f"{where}: not a whole pickle ({w.error})")
    return w


class _JoblibArrays:
    """joblib writes each numpy array's bytes raw right after the wrapper object's BUILD; read past them."""

    def __init__(self, r: Reader, where: str, f: Findings) -> None:
        self.r, self.where, self.f = r, where, f

    def __call__(self, inst: Any, w: Walk) -> Any:
        if not (
            isinstance(inst, Call)
            and isinstance(inst.func, Global)
            and inst.func.name == "NumpyArrayWrapper"
            and inst.func.module.endswith("numpy_pickle")
        ):
            return None
        state = inst.state.items if isinstance(inst.state, Container) else None
        if not isinstance(state, dict):
            raise Unscannable(f"{self.where}: a joblib array whose description the scanner cannot read")
        shape, dtype = state.get("shape"), state.get("dtype")
        if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise Unscannable(f"{self.where}: a joblib array of shape {shape!r}")
        size, is_object = _itemsize(dtype, self.where)
        if is_object:
            # Object arrays are a pickle of their own, read with pickle.load.
            _strict_walk(self.r, f"{self.where} (joblib object array)", self.f)
            return OPAQUE
        if state.get("numpy_array_alignment_bytes") is not None:
            padding = self.r.read_exact(1, "joblib padding")[0]
            self.r.read_exact(padding, "joblib padding")
        nbytes = math.prod(shape) * size
        if self.r.skip(nbytes) < nbytes:
            raise EOFError(f"truncated: a joblib array of {nbytes} bytes")
        return OPAQUE


def _itemsize(dtype: Any, where: str) -> tuple[int, bool]:
    """(bytes per element, is an object dtype) of a pickled ``numpy.dtype``."""
    if not (
        isinstance(dtype, Call)
        and str(dtype.func) in ("numpy.dtype", "numpy.core.multiarray.dtype", "numpy._core.multiarray.dtype")
        and isinstance(dtype.args, tuple)
        and dtype.args
        and isinstance(dtype.args[0], str)
    ):
        raise Unscannable(f"{where}: a joblib array whose dtype the scanner cannot read")
    state = dtype.state
    if isinstance(state, tuple) and len(state) >= 6 and state[4] not in (None, OPAQUE):
        raise Unscannable(f"{where}: a joblib array of a structured dtype")
    typestr = dtype.args[0]
    match = _TYPESTR.match(typestr)
    if match is None:
        raise Unscannable(f"{where}: a joblib array of dtype {typestr!r}")
    char, digits = match.groups()
    if char == "O":
        return 8, True
    if isinstance(state, tuple) and len(state) >= 6 and isinstance(state[5], int) and state[5] > 0:
        return state[5], False
    if digits:
        return int(digits) * (4 if char == "U" else 1), False
    if char in _NUMPY_CHAR:
        return _NUMPY_CHAR[char], False
    raise Unscannable(f"{where}: a joblib array of dtype {typestr!r}")


def _scan_npy(r: Reader, where: str, f: Findings) -> None:
    magic = r.read_exact(8, "npy header")
    major = magic[6]
    if major not in (1, 2, 3):
        raise Unscannable(f"{where}: npy format version {major}.{magic[7]}, which the scanner does not know")
    length = struct.unpack("<H" if major == 1 else "<I", r.read_exact(2 if major == 1 else 4, "npy header"))[0]
    if length > MAX_NPY_HEADER:
        raise Unscannable(f"{where}: an npy header of {length} bytes")
    text = r.read_exact(length, "npy header").decode("utf-8" if major == 3 else "latin-1", "replace")
    try:
        header = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        raise Unscannable(f"{where}: an npy header that is not a Python literal") from None
    if not isinstance(header, dict) or "descr" not in header:
        raise Unscannable(f"{where}: an npy header without a dtype")
    if _has_object(header["descr"], where):
        # np.load(allow_pickle=True) unpickles the array's data.
        f.formats.append("npy object array")
        _strict_walk(r, f"{where} (object array)", f)


def _has_object(descr: Any, where: str, depth: int = 0) -> bool:
    """Whether numpy would read an array of this ``descr`` with ``pickle.load``: as numpy's own
    ``descr_to_dtype`` walks it (a string is a dtype, a tuple a dtype and a shape or a view, anything
    else an iterable of fields, each a name, a dtype and perhaps a shape)."""
    if depth > 32:
        raise Bound(f"{where}: an npy dtype nested more than 32 deep (the scanner's bound)")
    if isinstance(descr, bytes):
        descr = descr.decode("latin-1")
    if isinstance(descr, str):
        return _typestr_has_object(descr, where)
    if isinstance(descr, tuple):
        if not descr:
            raise Unscannable(f"{where}: an empty npy dtype")
        found = _has_object(descr[0], where, depth + 1)
        for other in descr[1:]:
            if isinstance(other, str | bytes | list | dict):
                found = _has_object(other, where, depth + 1) or found
            elif not (isinstance(other, int) or (isinstance(other, tuple) and all(isinstance(d, int) for d in other))):
                raise Unscannable(f"{where}: an npy dtype the scanner cannot read ({str(descr)[:60]})")
        return found
    if not isinstance(descr, list | dict | set | frozenset):
        raise Unscannable(f"{where}: an npy dtype the scanner cannot read ({str(descr)[:60]})")
    found = False
    for field in descr:
        if not isinstance(field, str | bytes | tuple | list) or len(field) not in (2, 3):
            raise Unscannable(f"{where}: an npy dtype field the scanner cannot read ({str(field)[:60]})")
        found = _has_object(field[1], where, depth + 1) or found
    return found


#: Type strings as ``np.save`` writes them (``dtype.str``): none of them holds objects.
_PLAIN_TYPESTR = re.compile(r"[<>|=]?(?:[?bBhHiIlLqQpPnNefdgFDGc]|[biufcSUVa]\d+|[SUVa]|[mM]8(?:\[\w+\])?)")


def _typestr_has_object(text: str, where: str) -> bool:
    if _PLAIN_TYPESTR.fullmatch(text):
        return False
    spelled = text.lstrip("<>|=").lower()
    if spelled.startswith("o") or "object" in spelled:
        return True  # "O", "O8", "object", "object_": numpy reads them all as objects
    # np.dtype reads far more spellings ("float64", "f8,O", "(2,)O"): a header np.save never writes.
    raise Unscannable(f"{where}: npy dtype {text[:60]!r}, which np.save never writes and the scanner does not read")


def _is_tar(head: bytes) -> bool:
    if len(head) < 512 or not head[0]:
        return False
    if head[257:262] == b"ustar":
        return True
    try:
        recorded = int(head[148:156].split(b"\x00")[0].strip() or b"-1", 8)
    except ValueError:
        return False
    return recorded == sum(head[:148]) + 256 + sum(head[156:512])


_TORCH_TAR = ("sys_info", "pickle", "storages", "tensors")


def _scan_tar(r: Reader, where: str, f: Findings, depth: int) -> None:
    seen: set[str] = set()
    long_name: str | None = None
    pax: dict[str, str] = {}
    while True:
        block = r.read(512)
        if len(block) < 512 or not any(block):
            r.drain()  # the end-of-archive blocks and padding
            break
        if not _is_tar(block):
            raise Unscannable(f"{where}: a tar header with a bad checksum at byte {r.position - 512}")
        kind = block[156:157]
        size = _tar_size(block[124:136], where)
        name = long_name or pax.get("path") or _tar_name(block)
        size = int(pax.get("size", size)) if kind not in (b"x", b"g", b"L") else size
        long_name = None
        body = Limited(r, size)
        if kind in (b"x", b"g", b"L"):
            data = body.read_exact(min(size, 1 << 20), "tar extended header")
            body.drain()
            if kind == b"L":
                long_name = data.rstrip(b"\x00").decode("utf-8", "replace")
            elif kind == b"x":
                pax = _pax(data)
        else:
            pax = {}
            if kind in (b"0", b"\x00", b"7"):
                if name in seen:
                    # tarfile takes the last member of a name, a stream sees the first: refuse the ambiguity.
                    raise Unscannable(f"{where}: member {name!r} appears twice in the tar archive")
                seen.add(name)
                _tar_member(body, f"{where}:{name}", name, f, depth)
            body.drain()
        r.skip(-size % 512)
    if {"pickle", "storages"} <= seen:
        f.formats.append("torch legacy tar")


def _tar_member(body: Reader, where: str, name: str, f: Findings, depth: int) -> None:
    if name in ("sys_info", "pickle"):
        _strict_walk(body, where, f)
    elif name == "storages":
        # torch's oldest layout: a count, then per storage a pickled (key, location, type), its length, its bytes.
        for i in range(_count(_strict_walk(body, where, f), where)):
            args = _strict_walk(body, f"{where} (storage {i})", f).value
            kind = args[2] if isinstance(args, tuple) and len(args) == 3 else None
            element = _STORAGE_ELEMENT.get(kind.name.removesuffix("Storage")) if isinstance(kind, Global) else None
            if element is None:
                raise Unscannable(f"{where}: storage {i} of a type the scanner does not know")
            length = struct.unpack("<q", body.read_exact(8, "storage length"))[0]
            if length < 0 or body.skip(length * element) < length * element:
                raise Unscannable(f"{where}: storage {i} is truncated")
    elif name == "tensors":
        for i in range(_count(_strict_walk(body, where, f), where)):
            _strict_walk(body, f"{where} (tensor {i})", f)
            ndim = struct.unpack("<i", body.read_exact(4, "tensor rank"))[0]
            if ndim < 0 or ndim > 64:
                raise Unscannable(f"{where}: tensor {i} has rank {ndim}")
            body.read_exact(4 + 16 * ndim + 8, "tensor layout")
    else:
        _dispatch(body, where, name, f, depth + 1, loader_named(name))


def _count(w: Walk, where: str) -> int:
    if not isinstance(w.value, int) or isinstance(w.value, bool) or not 0 <= w.value < 1 << 32:
        raise Unscannable(f"{where}: expected a count, found {w.value!r}")
    return w.value


def _tar_size(field: bytes, where: str) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for sizes past 8 GiB
        return int.from_bytes(field[1:], "big")
    try:
        return int(field.split(b"\x00")[0].strip() or b"0", 8)
    except ValueError:
        raise Unscannable(f"{where}: a tar member size that is not a number") from None


def _tar_name(block: bytes) -> str:
    name = block[:100].split(b"\x00")[0]
    prefix = block[345:500].split(b"\x00")[0] if block[257:262] == b"ustar" else b""
    full = prefix + b"/" + name if prefix else name
    return full.decode("utf-8", "replace")


def _pax(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").split("\n"):
        _, _, record = line.partition(" ")
        key, sep, value = record.partition("=")
        if sep:
            out[key] = value
    return out
