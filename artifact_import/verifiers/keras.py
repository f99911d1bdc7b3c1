"""Keras: a model config that loads code is refused.

A ``Lambda`` layer stores its function as marshalled Python bytecode (or a
module and name to import), run when the model is loaded by Keras 2 and by
Keras 3 outside safe mode; a layer or object whose ``module`` is outside
Keras/TensorFlow makes the loader import that module. Keras' own safe mode has
been bypassed from inside Keras (CVE-2025-1550, CVE-2025-8747 and after): a
config object can name any Keras function (``keras.config.enable_unsafe_
deserialization``, ``keras.utils.get_file``), a ``TFSMLayer`` loads a
SavedModel from a path, a lookup layer reads its vocabulary from any file. So
references into Keras' utility, saving and config modules, those names, and
vocabularies given as paths are refused too. ``.keras`` files are zip
archives whose ``config.json`` is read in full; legacy ``.h5``/``.hdf5`` files
keep the config as a JSON attribute inside HDF5, which is searched for a
Lambda layer as the bytes stream past (there is no HDF5 parser here).
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..model import ArtifactFile, Verdict
from .base import VerifierSession
from .contentscan import EXPAND_LIMIT
from .policy import FormatVerifier, judge
from .reader import Reader, Unscannable
from .threaded import ThreadedSession
from .zipscan import scan_zip

MAX_CONFIG = 64 << 20
_H5_LAMBDA = re.compile(rb'"class_name":\s*"Lambda"')
_TRUSTED_MODULES = ("keras", "tf_keras", "tensorflow", "builtins", "keras_hub", "keras_nlp", "keras_cv")
#: Parts of a module path that are Keras' own machinery, not model components: config objects that point
#: there call functions a model never needs (safe mode's own switch, downloads, file reads).
_MACHINERY = frozenset({"utils", "saving", "config", "legacy", "export", "distribution", "callbacks"})
#: Names that load or run something outside the model whatever module they are reached through.
_DANGEROUS_NAMES = frozenset(
    {"enable_unsafe_deserialization", "get_file", "TFSMLayer", "load_model", "exec", "eval", "compile",
     "__import__", "getattr", "setattr", "open", "system", "popen", "import_module", "func_load", "load"}
)  # fmt: skip
_LOOKUPS = frozenset({"StringLookup", "IntegerLookup", "TextVectorization"})
_HINT = "Use --format-policy warn to import it anyway"


class KerasVerifier(FormatVerifier):
    name = "keras"
    # What keras.models.load_model dispatches on: .keras is a zip, .h5/.hdf5 the legacy HDF5 format.
    suffixes = (".keras", ".h5", ".hdf5")

    def start(self, file: ArtifactFile) -> VerifierSession:
        return _KerasSession(self, file)


class _KerasSession(ThreadedSession[list[str]]):
    def __init__(self, verifier: KerasVerifier, file: ArtifactFile) -> None:
        self._v = verifier
        super().__init__(file)

    def parse(self, feed: Reader) -> list[str]:
        if self.file.path.lower().endswith(".keras"):
            findings: list[str] = []
            seen = scan_zip(feed, self.file.path, lambda member, name: _member(member, name, findings), EXPAND_LIMIT)
            if "config.json" not in seen:
                raise Unscannable("a .keras archive without config.json")
            return findings
        return _search_h5(feed)

    def verdict(self, result: list[str] | None, error: BaseException | None) -> Verdict:
        findings = list(result or [])
        if error is not None:
            findings.append(f"cannot read the Keras model: {error}")
        clean = "model config loads no code"
        return judge(self._v.name, self._v.policy, findings, clean=clean, data={}, hint=_HINT)


def _member(member: Reader, name: str, findings: list[str]) -> None:
    if name != "config.json":
        return
    raw = member.read(MAX_CONFIG + 1)
    if len(raw) > MAX_CONFIG:
        raise Unscannable(f"config.json is over {MAX_CONFIG} bytes")
    try:
        config = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise Unscannable(f"config.json is not JSON ({exc})") from None
    findings.extend(code_in_config(config))


def code_in_config(config: Any, depth: int = 0) -> list[str]:
    """What in a Keras config would run or import code, or read a file, when the model is loaded."""
    found: list[str] = []
    if depth > 200:
        return ["a model config nested more than 200 deep"]
    if isinstance(config, dict):
        inner = config.get("config")
        name = inner.get("name") if isinstance(inner, dict) else None
        class_name = config.get("class_name")
        if class_name == "Lambda":
            found.append(f"Lambda layer {name!r} holds Python code that runs when the model is loaded")
        elif class_name == "__lambda__":
            found.append("a function serialized as Python bytecode (__lambda__), which runs when loaded")
        module = config.get("module")
        if isinstance(module, str) and "class_name" in config:
            parts = module.split(".")
            called = inner if class_name == "function" and isinstance(inner, str) else class_name
            if parts[0] not in _TRUSTED_MODULES:
                found.append(f"{class_name!r} is loaded by importing module {module!r}")
            elif _MACHINERY & set(parts[1:]):
                found.append(f"{called!r} from {module!r}: Keras machinery, not a model component")
            elif called in _DANGEROUS_NAMES or (parts[0] == "builtins" and class_name == "function"):
                found.append(f"{called!r} from {module!r} loads or runs something outside the model")
        if class_name in _DANGEROUS_NAMES:
            found.append(f"{class_name!r} loads or runs something outside the model")
        if class_name in _LOOKUPS and isinstance(inner, dict) and isinstance(inner.get("vocabulary"), str):
            found.append(
                f"{class_name} layer {name!r} reads its vocabulary from the path {inner['vocabulary'][:200]!r}"
            )
        for value in config.values():
            found.extend(code_in_config(value, depth + 1))
    elif isinstance(config, list):
        for value in config:
            found.extend(code_in_config(value, depth + 1))
    return found


def _search_h5(r: Reader) -> list[str]:
    tail = b""
    while block := r.read(1 << 20):
        window = tail + block
        if _H5_LAMBDA.search(window):
            return ["the HDF5 model config has a Lambda layer, which holds Python code that runs when loaded"]
        tail = window[-64:]
    return []
