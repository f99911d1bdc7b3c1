"""Pickle safety: walk the opcodes of pickle-based checkpoints, never unpickling them.

Loading a pickle can run any function it names. This verifier lists every
``module.name`` a pickle would import (``GLOBAL``, ``INST``, ``STACK_GLOBAL``)
and compares it with an **allow-list** of what tensors, state dicts and numpy
arrays need; anything else (``os.system``, ``builtins.eval``, ``subprocess``,
``runpy``, a custom class...) is reported. Deny-lists, as in picklescan, have
published bypasses; an allow-list fails closed.

Handled layouts: a plain pickle, PyTorch's legacy format (several pickles
then raw storage bytes), and PyTorch's zip format (every ``*.pkl`` member,
stored or deflated). The walk runs in a thread, fed the bytes as they stream
past the import through a bounded queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import pickletools
import queue
import struct
import threading
import zlib
from typing import Any

from ..errors import ConfigError
from ..model import ArtifactFile, Verdict
from .base import Verifier, VerifierSession

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")

_STORAGES = ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool",
             "ComplexFloat", "ComplexDouble", "QInt8", "QUInt8", "QInt32")  # fmt: skip
_DTYPES = ("float16", "float32", "float64", "bfloat16", "half", "float", "double", "int8", "int16", "int32",
           "int64", "uint8", "bool", "complex64", "complex128", "long")  # fmt: skip

#: What state dicts, tensors and numpy arrays need, and nothing that runs code of the file's choosing.
SAFE_GLOBALS: frozenset[str] = frozenset(
    {
        "collections.OrderedDict",
        "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_tensor_v3",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state",
        "torch._utils._rebuild_qtensor",
        "torch._utils._rebuild_sparse_tensor",
        "torch._utils._rebuild_device_tensor_from_numpy",
        "torch._tensor._rebuild_from_type_v2",
        "torch.Tensor",
        "torch.Size",
        "torch.device",
        "torch.nn.parameter.Parameter",
        "torch.storage.UntypedStorage",
        "torch.storage.TypedStorage",
        "torch.UntypedStorage",
        *(f"torch.{kind}Storage" for kind in _STORAGES),
        *(f"torch.{dtype}" for dtype in _DTYPES),
        "numpy.core.multiarray._reconstruct",
        "numpy._core.multiarray._reconstruct",
        "numpy.core.multiarray.scalar",
        "numpy._core.multiarray.scalar",
        "numpy.ndarray",
        "numpy.dtype",
        "_codecs.encode",
        *(f"{b}.{name}" for b in ("builtins", "__builtin__") for name in ("set", "frozenset", "slice", "complex")),
    }
)


class PicklePolicy(enum.StrEnum):
    FAIL = "fail"
    WARN = "warn"


class PickleVerifier(Verifier):
    name = "pickle"

    def __init__(self, policy: PicklePolicy | str = PicklePolicy.FAIL, *, extra_safe: frozenset[str] = frozenset()):
        try:
            self.policy = PicklePolicy(policy)
        except ValueError:
            raise ConfigError(f"pickle policy {policy!r}: expected 'fail' or 'warn'") from None
        self.safe = SAFE_GLOBALS | extra_safe

    def applies_to(self, file: ArtifactFile) -> bool:
        return file.path.lower().endswith(PICKLE_SUFFIXES)

    def start(self, file: ArtifactFile) -> VerifierSession:
        return _PickleSession(self, file)


_EOF = b""


class _Feed:
    """A blocking byte reader over chunks handed in from the event loop."""

    def __init__(self) -> None:
        self.chunks: queue.Queue[bytes] = queue.Queue(maxsize=4)
        self._buf = b""
        self._eof = False
        self.consumed = 0

    def read(self, n: int) -> bytes:
        while len(self._buf) < n and not self._eof:
            chunk = self.chunks.get()
            if chunk is _EOF or not chunk:
                self._eof = True
            else:
                self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        self.consumed += len(out)
        return out

    def readline(self) -> bytes:
        line = b""
        while not line.endswith(b"\n"):
            c = self.read(1)
            if not c:
                break
            line += c
        return line

    def skip(self, n: int) -> None:
        while n > 0:
            got = self.read(min(n, 1 << 20))
            if not got:
                return
            n -= len(got)


class _PickleSession(VerifierSession):
    def __init__(self, verifier: PickleVerifier, file: ArtifactFile) -> None:
        self._v = verifier
        self._file = file
        self._feed = _Feed()
        self._done = threading.Event()
        self._future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().run_in_executor(None, self._scan)

    def _scan(self) -> dict[str, Any]:
        try:
            return _scan(self._feed)
        finally:
            self._done.set()

    async def feed(self, chunk: bytes) -> None:
        if self._done.is_set():
            return  # everything that can hold code has been read; the rest is tensor data
        try:
            self._feed.chunks.put_nowait(chunk)
        except queue.Full:
            await asyncio.to_thread(self._put, chunk)

    async def finish(self) -> Verdict:
        if not self._done.is_set():
            await asyncio.to_thread(self._put_eof)
        report = await self._future
        imports: list[str] = report["imports"]
        unsafe = sorted({g for g in imports if g not in self._v.safe})
        data = {"format": report["format"], "imports": sorted(set(imports)), "unsafe": unsafe}
        if report.get("problem"):
            data["problem"] = report["problem"]
            unsafe = unsafe or [f"<unscannable: {report['problem']}>"]
        if not unsafe:
            return Verdict(PickleVerifier.name, True, f"{report['format']}: only safe imports", data)
        listed = ", ".join(unsafe[:8]) + (f" and {len(unsafe) - 8} more" if len(unsafe) > 8 else "")
        if self._v.policy is PicklePolicy.WARN:
            return Verdict(PickleVerifier.name, True, f"warning (policy warn): unsafe pickle imports {listed}", data)
        return Verdict(
            PickleVerifier.name,
            False,
            f"unsafe pickle: would import {listed} when loaded; not unpickled. "
            "Use --pickle-policy warn to import it anyway",
            data,
        )

    def _put(self, chunk: bytes) -> None:
        # The scanning thread may finish (and stop reading) at any moment.
        while not self._done.is_set():
            with contextlib.suppress(queue.Full):
                self._feed.chunks.put(chunk, timeout=0.05)
                return

    def _put_eof(self) -> None:
        self._put(_EOF)

    async def cancel(self) -> None:
        await asyncio.to_thread(self._put_eof)
        with contextlib.suppress(Exception):
            await self._future


def _scan(feed: _Feed) -> dict[str, Any]:
    head = feed.read(4)
    if head == b"PK\x03\x04":
        return _scan_zip(feed)
    rest = _Prefixed(head, feed)
    imports: list[str] = []
    scanned = 0
    # Legacy torch.save: magic, protocol, sys info, the object, storage keys; then raw bytes.
    for _ in range(5):
        found = _walk(rest)
        if found is None:
            break
        imports.extend(found)
        scanned += 1
    if scanned == 0:
        return {"format": "not a pickle", "imports": []}
    return {"format": "pickle" if scanned == 1 else f"pickle ({scanned} in sequence)", "imports": imports}


class _Prefixed:
    """``feed`` with some bytes already read put back in front."""

    def __init__(self, prefix: bytes, feed: _Feed) -> None:
        self._prefix = prefix
        self._feed = feed

    def read(self, n: int = -1) -> bytes:
        if self._prefix:
            out, self._prefix = self._prefix[:n], self._prefix[n:]
            return out + (self._feed.read(n - len(out)) if n > len(out) else b"")
        return self._feed.read(n)

    def readline(self) -> bytes:
        if self._prefix:
            if b"\n" in self._prefix:
                i = self._prefix.index(b"\n") + 1
                out, self._prefix = self._prefix[:i], self._prefix[i:]
                return out
            out, self._prefix = self._prefix, b""
            return out + self._feed.readline()
        return self._feed.readline()


def _walk(stream: Any) -> list[str] | None:
    """The globals one pickle imports, or None if the stream does not hold a whole pickle."""
    imports: list[str] = []
    strings: list[str | None] = []
    memo: dict[int, str | None] = {}
    try:
        for op, arg, _ in pickletools.genops(stream):
            name = op.name
            if name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                imports.append(f"{module}.{attr}")
            elif name == "STACK_GLOBAL":
                if len(strings) >= 2 and strings[-2] is not None and strings[-1] is not None:
                    imports.append(f"{strings[-2]}.{strings[-1]}")
                else:
                    imports.append("<STACK_GLOBAL of computed names>")
            if name in (
                "SHORT_BINUNICODE",
                "BINUNICODE",
                "BINUNICODE8",
                "UNICODE",
                "STRING",
                "BINSTRING",
                "SHORT_BINSTRING",
            ):
                strings.append(str(arg))
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                strings.append(memo.get(int(str(arg))))
            elif name in ("MEMOIZE",):
                memo[len(memo)] = strings[-1] if strings else None
            elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[int(str(arg))] = strings[-1] if strings else None
            elif name != "STACK_GLOBAL":
                strings.append(None)
            if name == "STOP":
                return imports
    except (ValueError, struct.error, UnicodeDecodeError):
        return None
    return None


def _scan_zip(feed: _Feed) -> dict[str, Any]:
    """PyTorch's zip checkpoints: walk the local headers in order, scan every ``*.pkl`` member."""
    imports: list[str] = []
    members = 0
    signature = b"PK\x03\x04"
    while signature == b"PK\x03\x04":
        header = feed.read(26)
        if len(header) < 26:
            return {"format": "zip", "imports": imports, "problem": "truncated zip"}
        flags, method = struct.unpack("<HH", header[2:6])
        compressed = struct.unpack("<I", header[14:18])[0]
        name_len, extra_len = struct.unpack("<HH", header[22:26])
        name = feed.read(name_len).decode(errors="replace")
        extra = feed.read(extra_len)
        if compressed == 0xFFFFFFFF:
            compressed = _zip64_size(extra)
        if flags & 0x08 and compressed == 0:
            return {"format": "zip", "imports": imports, "problem": f"member {name} has no size in its header"}
        if name.endswith(".pkl"):
            members += 1
            member = _Member(feed, compressed, method)
            found = _walk(member)
            if found is None:
                return {"format": "zip", "imports": imports, "problem": f"member {name} is not a whole pickle"}
            imports.extend(found)
            member.skip_rest()
        else:
            feed.skip(compressed)
        if flags & 0x08:
            descriptor = feed.read(4)
            feed.skip(12 if descriptor == b"PK\x07\x08" else 8)
        signature = feed.read(4)
    kind = f"zip checkpoint ({members} pickle member{'s' if members != 1 else ''})"
    return {"format": kind, "imports": imports}


def _zip64_size(extra: bytes) -> int:
    offset = 0
    while offset + 4 <= len(extra):
        tag, length = struct.unpack("<HH", extra[offset : offset + 4])
        if tag == 0x0001 and length >= 16:
            return int(struct.unpack("<Q", extra[offset + 12 : offset + 20])[0])
        offset += 4 + length
    return 0


class _Member:
    """One zip member's bytes, inflated if deflated; reads past its end return nothing."""

    def __init__(self, feed: _Feed, size: int, method: int) -> None:
        self._feed = feed
        self._left = size
        self._inflate = zlib.decompressobj(-15) if method == 8 else None
        self._buf = b""

    def _raw(self, n: int) -> bytes:
        data = self._feed.read(min(n, self._left))
        self._left -= len(data)
        return data

    def _fill(self, n: int) -> None:
        while len(self._buf) < n and self._left > 0:
            raw = self._raw(max(n, 1 << 16))
            self._buf += self._inflate.decompress(raw) if self._inflate else raw

    def read(self, n: int = -1) -> bytes:
        self._fill(n)
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def readline(self) -> bytes:
        while b"\n" not in self._buf and self._left > 0:
            self._fill(len(self._buf) + 1)
        i = self._buf.find(b"\n")
        return self.read(i + 1 if i >= 0 else len(self._buf))

    def skip_rest(self) -> None:
        while self._left > 0:
            self._raw(1 << 20)
