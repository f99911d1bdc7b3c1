"""NeMo: a ``.nemo`` archive whose config names something to call beyond the model's own libraries is refused.

A ``.nemo`` file is a tar (gzip-compressed in older versions) holding
``model_config.yaml`` and ``model_weights.ckpt``. ``restore_from`` hands
sections of the config to Hydra's ``instantiate``, which imports and calls
whatever ``_target_`` names, with the section's arguments (CVE-2025-23304:
``_target_: os.system``). The weights are a pickle, read by the pickle
verifier like any member of an archive. Here every ``_target_`` in the
archive's YAML must be a class of the libraries a NeMo model is built from;
a target the scanner cannot read for certain (an alias, an interpolation, a
tag) is refused as well. There is no YAML parser here: ``_target_`` keys are
found line by line, which is what a YAML key on a line of its own, or in a
flow mapping, looks like.
"""

from __future__ import annotations

import re

from ..model import ArtifactFile, Verdict
from .base import VerifierSession
from .policy import FormatVerifier, judge
from .reader import Decompressed, Limited, Reader, Unscannable
from .threaded import ThreadedSession

#: What NeMo models instantiate: their own modules, torch's layers, optimizers and data utilities, Lightning,
#: Megatron, Apex and Hugging Face model classes (as ModelAudit and NeMo's own fix allow them).
ALLOWED_PREFIXES = (
    "nemo.",
    "nemo_toolkit.",
    "torch.nn.",
    "torch.optim.",
    "torch.utils.data.",
    "pytorch_lightning.",
    "lightning.",
    "megatron.",
    "apex.",
    "transformers.",
)
#: Callables that run or load something whatever library they sit in.
_DANGEROUS = re.compile(
    r"(^|[._])(eval|exec|system|popen|spawn|subprocess|__import__|import_module|pickle|marshal|compile|getattr"
    r"|setattr|delattr|globals|locals|load|from_pretrained|get_file|download|call|run)([._]|$)",
    re.IGNORECASE,
)
_TARGET = re.compile(r"""(?:^|[\s{,\[-])["']?_target_["']?\s*:\s*(.*)$""")
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")
MAX_CONFIG = 64 << 20
_HINT = "Use --format-policy warn to import it anyway"


class NemoVerifier(FormatVerifier):
    name = "nemo"
    suffixes = (".nemo",)

    def start(self, file: ArtifactFile) -> VerifierSession:
        return _NemoSession(self, file)


class _NemoSession(ThreadedSession[list[str]]):
    def __init__(self, verifier: NemoVerifier, file: ArtifactFile) -> None:
        self._v = verifier
        super().__init__(file)

    def parse(self, feed: Reader) -> list[str]:
        reader: Reader = Decompressed(feed, "gzip") if feed.peek(2) == b"\x1f\x8b" else feed
        return _scan_tar(reader)

    def verdict(self, result: list[str] | None, error: BaseException | None) -> Verdict:
        findings = list(result or [])
        if error is not None:
            findings.append(f"cannot read the NeMo archive: {error}")
        return judge(
            self._v.name, self._v.policy, findings, clean="config instantiates only model classes", data={}, hint=_HINT
        )


def _scan_tar(r: Reader) -> list[str]:
    findings: list[str] = []
    long_name: str | None = None
    while True:
        block = r.read(512)
        if len(block) < 512 or not any(block):
            return findings
        size = _octal(block[124:136])
        kind = block[156:157]
        name = long_name or block[:100].split(b"\x00")[0].decode("utf-8", "replace")
        if block[257:262] == b"ustar" and block[345:500].strip(b"\x00"):
            name = block[345:500].split(b"\x00")[0].decode("utf-8", "replace") + "/" + name
        long_name = None
        body = Limited(r, size)
        if kind == b"L":
            long_name = body.read_exact(min(size, 1 << 16), "tar long name").rstrip(b"\x00").decode("utf-8", "replace")
        elif kind in (b"0", b"\x00", b"7") and name.lower().endswith((".yaml", ".yml", ".json")):
            if size > MAX_CONFIG:
                raise Unscannable(f"{name}: a config of {size} bytes (the scanner's bound: {MAX_CONFIG})")
            text = body.read_exact(size, "config").decode("utf-8", "replace")
            findings += [f"{name}: {problem}" for problem in targets(text)]
        body.drain()
        r.skip(-size % 512)


def targets(text: str) -> list[str]:
    """What is wrong with each Hydra ``_target_`` in a YAML (or JSON) text."""
    found: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        if "_target_" not in line:
            continue
        match = _TARGET.search(line)
        if match is None:
            found.append(f"line {number}: a _target_ the scanner cannot read ({line.strip()[:120]!r})")
            continue
        value = _first_token(match.group(1).strip())
        if not _DOTTED.fullmatch(value):
            found.append(f"line {number}: _target_ {value[:120]!r} is not a plain dotted name the scanner can check")
        elif not value.startswith(ALLOWED_PREFIXES) or _DANGEROUS.search(value.split(".", 1)[1]):
            found.append(
                f"line {number}: _target_ {value!r}: Hydra would import and call it when the model is restored"
            )
    return found


def _first_token(text: str) -> str:
    """The scalar a key's value starts with: quoted, or up to what ends a plain scalar (in a flow mapping too)."""
    if text[:1] in ("'", '"'):
        end = text.find(text[0], 1)
        return text[1:end] if end > 0 else text
    match = re.match(r"[^\s,}\]#]*", text)
    return match.group(0) if match else text


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:
        return int.from_bytes(field[1:], "big")
    try:
        return int(field.split(b"\x00")[0].strip() or b"0", 8)
    except ValueError:
        raise Unscannable("a tar member size that is not a number") from None
