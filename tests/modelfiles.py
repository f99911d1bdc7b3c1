"""Model files as the real libraries write them, and the malicious files the scanner corpora publish.

Benign files come from numpy, joblib, h5py, onnx and the standard library
(plus the torch-made checkpoints in ``data/checkpoints``). Malicious ones are
built to the bypasses found against pickle scanners: each runs its payload
(``touch MARKER``) when loaded by the loader named with it, which
``test_model_safety`` checks by really loading them in a child process.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import random
import struct
import tarfile
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs

CHECKPOINTS = Path(__file__).resolve().parent / "data" / "checkpoints"


@contextlib.contextmanager
def no_payload_runs(marker: str) -> Iterator[None]:
    """Around a test: the file a payload touches is gone before it, and must still be gone after it."""
    if os.path.exists(marker):
        os.remove(marker)
    yield
    assert not os.path.exists(marker), "a payload ran in the test process"


@attrs.frozen
class Sample:
    name: str
    data: bytes
    #: Python run in a child process with ``path`` bound to the file: a loader that runs the payload.
    loader: str | None = None


class Payload:
    """Runs ``touch MARKER`` when unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[[str], int], tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


PICKLE_LOAD = "import pickle; pickle.load(open(path, 'rb'))"
PICKLE_LOAD_UTF8 = "import pickle; pickle.load(open(path, 'rb'), encoding='utf-8')"  # as torch.load reads
JOBLIB_LOAD = "import joblib; joblib.load(path)"
NPY_LOAD = "import numpy as np; np.load(path, allow_pickle=True)"
NPZ_LOAD = "import numpy as np; np.load(path, allow_pickle=True)['a']"
ZIP_LOAD = "import pickle, zipfile; pickle.loads(zipfile.ZipFile(path).read('archive/data.pkl'))"
LEGACY_LOAD = "import pickle\nwith open(path, 'rb') as f:\n    for _ in range(5): pickle.load(f)"
TAR_LOAD = "import pickle, tarfile; pickle.load(tarfile.open(path).extractfile('pickle'))"


def _stringnl(text: str) -> bytes:
    return text.encode() + b"\n"


def _short_unicode(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def malicious(marker: str) -> list[Sample]:
    evil = Payload(marker)
    p0, p2, p4 = (pickle.dumps(evil, protocol=n) for n in (0, 2, 4))
    cmd = f"touch {marker}"
    samples = [
        Sample("plain_p0.pkl", p0, PICKLE_LOAD),
        Sample("plain_p4.pkl", p4, PICKLE_LOAD),
        # pickle.load runs the payload, then fails: what follows the failure point does not matter.
        Sample("no_stop.bin", p2[:-1], PICKLE_LOAD),
        Sample("bad_opcode_at_end.bin", p2[:-1] + b"\xff", PICKLE_LOAD),
        # Integers pickletools refuses and pickle accepts, before the payload.
        Sample("hex_int.pt", b"I0x1\n0" + p0, PICKLE_LOAD),
        Sample("hex_long.pt", b"L0x10L\n0" + p0, PICKLE_LOAD),
        Sample("octal_int.pt", b"I010\n0" + p0, PICKLE_LOAD),
        # A non-ASCII STRING that torch (encoding utf-8) reads, before the payload.
        Sample("nonascii_string.pt", b"S'\xc3\xa9'\n0" + p0, PICKLE_LOAD_UTF8),
        # STACK_GLOBAL names fetched from the memo, and split across frames.
        Sample("memo_names.pkl", _memo_stack_global(cmd), PICKLE_LOAD),
        Sample("frame_split.pkl", _frame_split_stack_global(cmd), PICKLE_LOAD),
        Sample("binstring_names.pkl", _binstring_stack_global(cmd), PICKLE_LOAD),
        # The legacy torch layout: the payload in the 4th or the 5th pickle.
        Sample("legacy_4th.bin", _legacy([None, None, None, evil, None]), LEGACY_LOAD),
        Sample("legacy_5th.bin", _legacy([None, None, None, None, evil]), LEGACY_LOAD),
        Sample("model.joblib", _joblib({"w": _np().arange(1000.0), "x": evil}), JOBLIB_LOAD),
        Sample("model_zlib.joblib", _joblib({"w": _np().arange(1000.0), "x": evil}, compress=3), JOBLIB_LOAD),
        Sample("model_gzip.pkl", _joblib({"w": _np().ones(10), "x": evil}, compress=("gzip", 3)), JOBLIB_LOAD),
        Sample("object_array.npy", _npy_object(evil), NPY_LOAD),
        Sample("object_array.npz", _npz_object(evil), NPZ_LOAD),
        # Named as nothing a scanner picks by suffix.
        Sample("checkpoint.pth.tar", p2, PICKLE_LOAD),
        Sample("notes.txt", p2, PICKLE_LOAD),
        Sample("raw_pickle.npy", p2, NPY_LOAD),
        Sample("archive.zip", _zip({"archive/data.pkl": p2}), ZIP_LOAD),
        Sample("legacy.tar", _legacy_tar(evil), TAR_LOAD),
        # Zip tricks: a loader reads through the central directory, a stream through the local headers.
        Sample("hidden_member.pt", _zip_hidden_member(p2), ZIP_LOAD),
        Sample("name_mismatch.pt", _zip_name_mismatch(p2)),
        Sample("junk_between_members.pt", _zip_with_junk(p2)),
        # nullifAI: a checkpoint in a 7z archive, which the scanner cannot open, under a loader's name.
        Sample("pytorch_model.bin", b"7z\xbc\xaf\x27\x1c\x00\x04" + os.urandom(64)),
    ]
    return samples


def benign() -> list[Sample]:
    np = _np()
    rng = np.random.default_rng(0)
    samples = [Sample(p.name, p.read_bytes()) for p in sorted(CHECKPOINTS.iterdir()) if p.suffix != ".md"]
    samples.remove(next(s for s in samples if s.name == "make_checkpoints.py"))
    # Code that runs when it is loaded: refused by default (--torchscript-policy), tested on its own.
    samples.remove(next(s for s in samples if s.name == "torchscript.pt"))
    arrays = {"w": rng.random((16, 16)), "i": np.arange(7), "h": np.zeros(3, dtype=np.float16)}
    samples += [Sample(f"arrays_p{n}.pkl", pickle.dumps(arrays, protocol=n)) for n in (2, 3, 4, 5)]
    samples += [
        Sample("frame_between_names.pkl", frame_between_module_and_name()),
        Sample("descriptor_stored.pt", torch_like_zip(deflate=False)),
        Sample("descriptor_deflated.pt", torch_like_zip(deflate=True)),
        Sample("arrays.joblib", _joblib(arrays)),
        Sample("arrays_zlib.joblib", _joblib(arrays, compress=3)),
        Sample("arrays_gzip.joblib", _joblib(arrays, compress=("gzip", 3))),
        Sample("arrays_bz2.joblib", _joblib(arrays, compress=("bz2", 3))),
        Sample("arrays_xz.joblib", _joblib(arrays, compress=("xz", 3))),
        Sample("array.npy", _npy(rng.random((4, 4)))),
        Sample("arrays.npz", _npz(a=rng.random(5), b=np.arange(3))),
        Sample("legacy_benign.tar", _legacy_tar(None)),
        Sample("random.bin", random.Random(7).randbytes(256 * 1024)),
        Sample("accelerate_config.yaml", b"compute_environment: LOCAL_MACHINE\ndistributed_type: 'NO'\n"),
        Sample("config.json", b'{"architectures": ["LlamaForCausalLM"], "hidden_size": 4096}\n'),
        Sample("inference.py", b"import torch\n\nclass Model(torch.nn.Module):\n    pass\n"),
    ]
    return samples


# --- pickles built by hand, opcode by opcode ------------------------------------------------------


def _memo_stack_global(cmd: str) -> bytes:
    return (
        b"\x80\x04" + _short_unicode("posix") + b"\x94" + _short_unicode("system") + b"\x94" + b"00"
        + b"h\x00h\x01\x93" + _short_unicode(cmd) + b"\x85R."
    )  # fmt: skip


def _frame_split_stack_global(cmd: str) -> bytes:
    first = _short_unicode("posix")
    rest = _short_unicode("system") + b"\x93" + _short_unicode(cmd) + b"\x85R."
    return b"\x80\x04" + b"\x95" + struct.pack("<Q", len(first)) + first + b"\x95" + struct.pack("<Q", len(rest)) + rest


def _binstring_stack_global(cmd: str) -> bytes:
    return b"\x80\x04U\x05posixU\x06system\x93" + _short_unicode(cmd) + b"\x85R."


def frame_between_module_and_name() -> bytes:
    """What the standard library writes for a large dict: a FRAME between a STACK_GLOBAL's two names."""
    import pickletools

    for pad in range(65400, 65700):
        data = pickle.dumps([b"x" * pad, OrderedDict(a=1)], protocol=4)
        ops = [op.name for op, _, _ in pickletools.genops(data)]
        at = ops.index("STACK_GLOBAL")
        if "FRAME" in ops[at - 4 : at]:
            return data
    raise AssertionError("no padding put a FRAME between the names")


def _legacy(objects: list[object]) -> bytes:
    defaults = [0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}, {"w": 1}, ["0"]]
    parts = [
        pickle.dumps(obj if obj is not None else default, protocol=2)
        for obj, default in zip(objects, defaults, strict=True)
    ]
    return b"".join(parts) + os.urandom(4096)


def _legacy_tar(evil: object | None) -> bytes:
    """torch's oldest layout: a tar of sys_info, storages, tensors and pickle (each framed as torch wrote it)."""
    storages = pickle.dumps(1, protocol=2)
    storages += _torch_storage_args() + struct.pack("<q", 4) + bytes(16)
    tensors = pickle.dumps(1, protocol=2) + pickle.dumps(("t0", "0", None), protocol=2)
    tensors += struct.pack("<i", 1) + bytes(4) + struct.pack("<q", 4) + struct.pack("<q", 1) + struct.pack("<q", 0)
    members = {
        "sys_info": pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2),
        "storages": storages,
        "tensors": tensors,
        "pickle": pickle.dumps(evil if evil is not None else {"weight": "t0"}, protocol=2),
    }
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _torch_storage_args() -> bytes:
    # ("0", "cpu", torch.FloatStorage), written as torch's pickler writes the storage type: a GLOBAL.
    return b"\x80\x02X\x01\x00\x00\x000X\x03\x00\x00\x00cpuctorch\nFloatStorage\nq\x00\x87q\x01."


# --- zips -------------------------------------------------------------------------------------------


class _Unseekable(io.RawIOBase):
    """A write-only stream without seek: zipfile then writes data descriptors, as torch.save does."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        return self.buf.write(b)


def _zip(members: dict[str, bytes], *, deflate: bool = False, descriptors: bool = False) -> bytes:
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    target: _Unseekable | io.BytesIO = _Unseekable() if descriptors else io.BytesIO()
    with zipfile.ZipFile(target, "w", compression=method) as z:  # type: ignore[arg-type]
        for name, data in members.items():
            z.writestr(name, data)
    return target.buf.getvalue() if isinstance(target, _Unseekable) else target.getvalue()


def torch_like_zip(*, deflate: bool) -> bytes:
    """A checkpoint laid out as torch.save writes it, members with data descriptors, numpy arrays inside."""
    np = _np()
    pkl = pickle.dumps(OrderedDict(weight=np.arange(4.0)), protocol=2)
    data = _zip(
        {"archive/data.pkl": pkl, "archive/data/0": os.urandom(4096), "archive/version": b"3\n"},
        deflate=deflate,
        descriptors=True,
    )
    assert struct.unpack("<H", data[6:8])[0] & 0x8, "zipfile did not write a data descriptor"
    return data


def _zip_hidden_member(evil: bytes) -> bytes:
    """A stored member whose bytes hold a whole second member; the central directory points into them."""
    hidden_name = b"archive/data.pkl"
    import zlib

    hidden = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 0, 0, 0, zlib.crc32(evil), len(evil), len(evil),
                         len(hidden_name), 0) + hidden_name + evil  # fmt: skip
    cover = b"\x00" * 16 + hidden
    cover_name = b"archive/padding"
    local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 0, 0, 0, zlib.crc32(cover), len(cover), len(cover),
                        len(cover_name), 0) + cover_name  # fmt: skip
    hidden_offset = len(local) + 16
    body = local + cover
    central = struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, zlib.crc32(evil), len(evil),
                          len(evil), len(hidden_name), 0, 0, 0, 0, 0, hidden_offset) + hidden_name  # fmt: skip
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1, len(central), len(body), 0)
    return body + central + end


def _zip_name_mismatch(evil: bytes) -> bytes:
    data = bytearray(_zip({"archive/data.pkl": evil}))
    at = data.index(b"archive/data.pkl")  # the local header's copy comes first
    data[at : at + 16] = b"archive/versionX"
    return bytes(data)


def _zip_with_junk(evil: bytes) -> bytes:
    first = _zip({"archive/version": b"3\n"})
    cd = first.index(b"PK\x01\x02")
    # Junk where the next member would start; the central directory's offset is moved past it.
    junk = evil
    data = bytearray(first[:cd] + junk + first[cd:])
    end = data.rindex(b"PK\x05\x06")
    data[end + 16 : end + 20] = struct.pack("<I", cd + len(junk))
    return bytes(data)


# --- numpy and joblib -------------------------------------------------------------------------------


def _np():  # type: ignore[no-untyped-def]
    import numpy

    return numpy


def _joblib(obj: object, compress: object = 0) -> bytes:
    import joblib

    buf = io.BytesIO()
    joblib.dump(obj, buf, compress=compress)
    return buf.getvalue()


def _npy(array: object) -> bytes:
    buf = io.BytesIO()
    _np().save(buf, array)
    return buf.getvalue()


def _npz(**arrays: object) -> bytes:
    buf = io.BytesIO()
    _np().savez(buf, **arrays)
    return buf.getvalue()


def _npy_object(evil: object) -> bytes:
    np = _np()
    buf = io.BytesIO()
    np.save(buf, np.array([evil, 1], dtype=object), allow_pickle=True)
    return buf.getvalue()


def _npz_object(evil: object) -> bytes:
    np = _np()
    buf = io.BytesIO()
    np.savez(buf, a=np.array([evil, 1], dtype=object))
    return buf.getvalue()
