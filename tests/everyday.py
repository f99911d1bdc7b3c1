"""Everyday repository files: real ones copied from the Debian and Python install, and ones the standard
library writes. Model repositories carry figures, READMEs, licences, fonts, audio samples and archives
beside their weights; none of them is a threat, and none may fail an import."""

from __future__ import annotations

import gzip
import io
import json
import sqlite3
import struct
import tarfile
import tempfile
import wave
import zipfile
from pathlib import Path

import attrs

#: Where the installed files come from, and how many of each kind (the smallest first, for a quick corpus).
_INSTALLED = {
    "png": ("/usr/share", 40),
    "svg": ("/usr/share", 5),
    "gif": ("/usr/share", 10),
    "jpg": ("/usr/share", 6),
    "ico": ("/usr/share", 6),
    "xpm": ("/usr/share", 4),
    "ttf": ("/usr/share", 6),
    "pdf": ("/usr/share", 2),
    "mp3": ("/usr/share", 1),
    "gz": ("/usr/share/doc", 40),
    "mo": ("/usr/share/locale", 10),
    "pem": ("/etc/ssl", 5),
    "crt": ("/usr/share/ca-certificates", 5),
    "zip": ("/usr/lib", 4),
    "html": ("/usr/share/doc", 10),
    "txt": ("/usr/share/doc", 10),
    "json": ("/usr/lib/python3", 5),
    "py": ("/usr/lib/python3", 10),
    "css": ("/usr/share", 4),
    "js": ("/usr/share", 4),
}
_MAX_SIZE = 4 << 20


@attrs.frozen
class Everyday:
    name: str
    data: bytes


def installed() -> list[Everyday]:
    """Real files of each kind from this machine's install, chosen the same way on every run."""
    found: list[Everyday] = []
    for ext, (root, count) in _INSTALLED.items():
        paths = [p for p in Path(root).rglob(f"*.{ext}") if p.is_file() and not p.is_symlink()]
        paths = sorted((p for p in paths if 0 < p.stat().st_size <= _MAX_SIZE), key=lambda p: (p.stat().st_size, p))
        step = max(1, len(paths) // count)
        for i, path in enumerate(paths[::step][:count]):
            found.append(Everyday(f"installed/{ext}/{i:02d}-{path.name}", path.read_bytes()))
    licences = sorted(Path("/usr/share/common-licenses").iterdir())
    found += [Everyday(f"licenses/{p.name}", p.read_bytes()) for p in licences if p.is_file()]
    return found


def written() -> list[Everyday]:
    """Files as people write them, and as the standard library writes them: those that read as opcodes."""
    texts = {
        "README.md": b"Please cite the paper if you use this model.\n\n## Usage\n\n```python\nimport torch\n```\n",
        "NOTES.txt": b"Pretrained on 1.2M images; fine-tuned for 3 epochs.\n",
        "labels.txt": b"cat\ndog\nbird\nfish\n",
        "classes": b"cat\ndog\n",
        "COPYING": b"copyright\nholder: The Authors\n\nPermission is hereby granted...\n",
        "LICENSE": b"Copyright 2026 The Authors\n\nLicensed under the Apache License, Version 2.0\n",
        "vocab.txt": b"[PAD]\n[UNK]\n[CLS]\n[SEP]\nthe\nof\n",
        "merges.txt": b"#version: 0.2\nt h\nth e\n",
        "special_tokens_map.json": json.dumps({"unk_token": "<unk>"}).encode(),
        "tokenizer_config.json": json.dumps({"model_max_length": 512, "chat_template": "{{ bos_token }}"}).encode(),
        "generation_config.json": b'{"do_sample": true, "temperature": 0.7}\n',
        ".gitattributes": b"*.bin filter=lfs diff=lfs merge=lfs -text\n*.pt filter=lfs diff=lfs merge=lfs -text\n",
        "requirements.txt": b"torch>=2.0\ntransformers\n",
        "coco.names": b"person\nbicycle\ncar\n",
        "image.ppm": b"P6\n2 2\n255\n" + bytes(range(12)),
        "image.pgm": b"P5\n2 2\n255\n" + bytes(4),
        "notebook.ipynb": json.dumps({"cells": [], "nbformat": 4, "nbformat_minor": 5}).encode(),
        "utf16.txt": "Model card\n".encode("utf-16"),
        "latin1.txt": "Modèle pré-entraîné\n".encode("latin-1"),
    }
    files = [Everyday(name, data) for name, data in texts.items()]
    files.append(Everyday("sample.wav", _wav()))
    files.append(Everyday("results.sqlite", _sqlite()))
    files.append(Everyday("docs.tar.gz", _tar({k: v for k, v in texts.items() if k.endswith(".txt")}, "w:gz")))
    files.append(Everyday("docs.tar", _tar(texts, "w")))
    files.append(Everyday("docs.zip", _zip(texts)))
    files.append(Everyday("README.md.gz", gzip.compress(texts["README.md"], mtime=0)))
    return files


def everyday() -> list[Everyday]:
    return installed() + written()


def _wav() -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"".join(struct.pack("<h", (i * 37) % 2000 - 1000) for i in range(1600)))
    return out.getvalue()


def _sqlite() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.db"
        con = sqlite3.connect(path)
        con.execute("create table results (step integer, loss real)")
        con.executemany("insert into results values (?, ?)", [(i, 1.0 / (i + 1)) for i in range(100)])
        con.commit()
        con.close()
        return path.read_bytes()


def _tar(members: dict[str, bytes], mode: str) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode) as tar:  # type: ignore[call-overload]
        for name, data in members.items():
            info = tarfile.TarInfo(f"docs/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(f"docs/{name}", data)
    return out.getvalue()
