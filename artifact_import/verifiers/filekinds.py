"""Which bytes a loader would unpickle: decided from a file's name and its first bytes together.

A pickle is dangerous where a loader would unpickle it. Loaders pick files by
name (``torch.load``, ``pickle``, ``joblib`` and ``numpy`` on ``.bin .pt .pth
.ckpt .pkl .joblib .npy .dat ...``), by a container's structure (a zip's
``data.pkl``, an ``.npy`` header's dtype), and a stream that opens with the
PROTO opcode (``\\x80`` then a protocol number) is a pickle whatever its name.
So a stream is read as a pickle in one of three ways:

- ``STRICT``: a loader unpickles it (a loader's name, a PROTO opcode, a
  container's pickle member). Anything it would import outside the allow-list
  is refused, and so is a stream that breaks after it imported anything,
  since ``pickle.load`` runs what it read before it failed (CVE-2025-10155:
  a protocol-0 pickle in a ``.bin`` is still refused).
- ``CODE``: binary bytes of no known format under a name no loader goes by.
  Refused only where the bytes would import something outside the allow-list.
- not at all: a known format by its magic bytes (PNG, JPEG, PDF, fonts,
  audio...) or text by its content, under a name no loader goes by. A PNG's
  signature reads as two opcodes and a README that starts "Please cite" as a
  persistent load, but no loader unpickles either.
"""

from __future__ import annotations

import enum
import posixpath
import re

from .pickleops import OPCODE_BYTES


class Mode(enum.Enum):
    STRICT = "strict"
    CODE = "code"
    NONE = "none"


#: Suffixes the pickle-based loaders are given in practice (torch, pickle, joblib, numpy, sklearn, fastai...).
LOADER_SUFFIXES = frozenset(
    {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".pk", ".joblib", ".jbl", ".dat", ".data", ".npy", ".npz",
     ".sav", ".model", ".tar", ".th", ".torch", ".pyt", ".chkpt", ".checkpoint", ".debug_pkl", ".pkl3", ".mdl"}
)  # fmt: skip
#: Names loaders open by convention without one of those suffixes (the legacy torch tar's members).
LOADER_NAMES = frozenset({"pickle", "sys_info", "storages", "tensors"})
#: Suffixes of a compression layer: ``x.pkl.gz`` is read by joblib as ``x.pkl``.
COMPRESSION_SUFFIXES = {".gz": "", ".tgz": ".tar", ".bz2": "", ".tbz2": ".tar", ".xz": "", ".txz": ".tar",
                        ".lzma": "", ".z": "", ".zlib": "", ".lz4": "", ".zst": ""}  # fmt: skip

#: Magic bytes of formats that are not pickles and that no pickle loader reads (checked after the containers).
_FORMATS: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "PNG image"),
    (0, b"\xff\xd8\xff", "JPEG image"),
    (0, b"GIF87a", "GIF image"),
    (0, b"GIF89a", "GIF image"),
    (8, b"WEBP", "WebP image"),
    (0, b"BM", "BMP image"),
    (0, b"II*\x00", "TIFF image"),
    (0, b"MM\x00*", "TIFF image"),
    (0, b"\x00\x00\x01\x00", "icon"),
    (0, b"%PDF-", "PDF document"),
    (0, b"%!PS", "PostScript document"),
    (0, b"\x00\x01\x00\x00", "TrueType font"),
    (0, b"OTTO", "OpenType font"),
    (0, b"true", "TrueType font"),
    (0, b"ttcf", "font collection"),
    (0, b"wOFF", "WOFF font"),
    (0, b"wOF2", "WOFF2 font"),
    (8, b"WAVE", "WAV audio"),
    (8, b"AVI ", "AVI video"),
    (0, b"fLaC", "FLAC audio"),
    (0, b"OggS", "Ogg audio"),
    (0, b"ID3", "MP3 audio"),
    (0, b"\xff\xfb", "MP3 audio"),
    (0, b"\xff\xf3", "MP3 audio"),
    (0, b"\xff\xf2", "MP3 audio"),
    (0, b"\xff\xf1", "AAC audio"),
    (0, b"\xff\xf9", "AAC audio"),
    (8, b"AIFF", "AIFF audio"),
    (0, b"MThd", "MIDI"),
    (4, b"ftyp", "MP4/M4A media"),
    (0, b"\x1a\x45\xdf\xa3", "Matroska/WebM video"),
    (0, b"\x7fELF", "ELF executable"),
    (0, b"MZ", "Windows executable"),
    (0, b"\xca\xfe\xba\xbe", "Java class or Mach-O"),
    (0, b"\xcf\xfa\xed\xfe", "Mach-O executable"),
    (0, b"\x00asm", "WebAssembly"),
    (0, b"SQLite format 3\x00", "SQLite database"),
    (0, b"\x89HDF\r\n\x1a\n", "HDF5"),
    (0, b"GGUF", "GGUF"),
    (0, b"PAR1", "Parquet"),
    (0, b"ARROW1", "Arrow"),
    (4, b"TFL3", "TFLite"),
    (0, b"\xde\x12\x04\x95", "gettext catalog"),
    (0, b"\x95\x04\x12\xde", "gettext catalog"),
    (0, b"Rar!\x1a\x07", "RAR archive"),
    (0, b"\x28\xb5\x2f\xfd", "zstd stream"),
    (0, b"-----BEGIN ", "PEM"),
    (0, b"\x30\x82", "DER certificate"),
)
#: Bytes no text holds (NUL and the C0 controls other than whitespace, backspace and escape; DEL).
_BINARY = re.compile(rb"[\x00-\x07\x0e-\x1a\x1c-\x1f\x7f]")
_STORAGE = re.compile(r"(^|/)\.?data/\d+$")


def loader_named(path: str) -> bool:
    """Whether a pickle loader opens a file of this name, by the conventions the libraries use."""
    name = posixpath.basename(path.lower())
    stem, suffix = posixpath.splitext(name)
    while suffix in COMPRESSION_SUFFIXES:
        replacement = COMPRESSION_SUFFIXES[suffix]
        if replacement:
            return replacement in LOADER_SUFFIXES
        stem, suffix = posixpath.splitext(stem)
    return suffix in LOADER_SUFFIXES or name in LOADER_NAMES


def inner_name(path: str) -> str:
    """The name a compressed file's content goes by (``x.pkl.gz`` → ``x.pkl``; ``model.joblib`` stays)."""
    stem, suffix = posixpath.splitext(path)
    replacement = COMPRESSION_SUFFIXES.get(suffix.lower())
    if replacement is None:
        return path
    return stem + replacement


def torch_storage(member: str) -> bool:
    """A torch zip's storage bytes (``archive/data/0``): read raw by torch, never unpickled."""
    return _STORAGE.search(member) is not None


def known_format(head: bytes) -> str | None:
    """The non-pickle format ``head`` (a file's first bytes) announces, if any."""
    for offset, magic, kind in _FORMATS:
        if head[offset : offset + len(magic)] == magic:
            if offset == 8 and head[:4] not in (b"RIFF", b"FORM"):
                continue
            return kind
    return None


def looks_like_text(head: bytes) -> bool:
    """Text by content: no byte that only binary data holds (UTF-8 or latin-1 alike), or a UTF-16 mark."""
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return True
    return bool(head) and _BINARY.search(head) is None


def proto_start(head: bytes) -> bool:
    """Opens with PROTO and a protocol ``pickle`` accepts: a pickle whatever the file is called."""
    return len(head) >= 2 and head[0] == 0x80 and head[1] <= 5


def mode_for(name: str, head: bytes, *, loader: bool | None = None) -> tuple[Mode, str | None]:
    """How to read a stream that is not a container: (mode, the known format or "text" when not read)."""
    if proto_start(head) or (loader if loader is not None else loader_named(name)):
        return Mode.STRICT, None
    if not head or head[0] not in OPCODE_BYTES:
        return Mode.NONE, None  # a pickle starts with an opcode: nothing else can unpickle
    kind = known_format(head)
    if kind is not None:
        return Mode.NONE, kind
    if looks_like_text(head):
        return Mode.NONE, "text"
    return Mode.CODE, None
