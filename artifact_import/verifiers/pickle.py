"""Pickle safety: every pickle a loader would run from a file, named and judged, never unpickled.

Loading a pickle can run any function it names. This verifier finds every
pickle in a file by its *content* (whatever the file is called: see
:mod:`.contentscan`), lists every ``module.name`` it would import, and compares
them with an **allow-list** of what tensors, state dicts, optimizer states and
numpy arrays need (the same set as ``torch.load(weights_only=True)``, plus
numpy and joblib's array wrapper). Deny-lists, as in picklescan, have
published bypasses; an allow-list fails closed.

It fails closed in the other direction too: a file the scanner cannot fully
account for (a pickle that breaks after it imported something, a zip whose
central directory disagrees with its members, a 7z archive) is refused with
the reason. The only clean verdicts are "parsed completely, only allowed
imports" and "holds no pickle".
"""

from __future__ import annotations

from typing import Any

from ..model import ArtifactFile, Verdict
from .base import Verifier, VerifierSession
from .contentscan import Findings, scan
from .policy import Policy, judge
from .reader import Reader, Unscannable
from .threaded import ThreadedSession

#: Kept for callers of the earlier API; the policy enum is shared by the content verifiers.
PicklePolicy = Policy

_STORAGES = ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool",
             "ComplexFloat", "ComplexDouble", "QInt8", "QUInt8", "QInt32", "QUInt4x2", "QUInt2x4")  # fmt: skip
_TENSORS = ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool")
_DTYPES = ("float16", "float32", "float64", "bfloat16", "half", "float", "double", "int8", "int16", "int32",
           "int64", "uint8", "uint16", "uint32", "uint64", "bool", "complex32", "complex64", "complex128",
           "cfloat", "cdouble", "chalf", "long", "int", "short", "qint8", "quint8", "qint32", "quint4x2",
           "quint2x4", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu",
           "float4_e2m1fn_x2", "bits1x8", "bits2x4", "bits4x2", "bits8", "bits16", "int1", "int2", "int3",
           "int4", "int5", "int6", "int7", "uint1", "uint2", "uint3", "uint4", "uint5", "uint6", "uint7")  # fmt: skip
_QSCHEMES = ("per_tensor_affine", "per_tensor_symmetric", "per_channel_affine", "per_channel_symmetric",
             "per_channel_affine_float_qparams")  # fmt: skip
_LAYOUTS = ("strided", "sparse_coo", "sparse_csr", "sparse_csc", "sparse_bsr", "sparse_bsc", "_mkldnn", "jagged")
_REBUILD = ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
            "_rebuild_parameter_with_state", "_rebuild_qtensor", "_rebuild_sparse_tensor",
            "_rebuild_meta_tensor_no_storage", "_rebuild_nested_tensor", "_rebuild_wrapper_subclass",
            "_rebuild_device_tensor_from_numpy")  # fmt: skip
_NUMPY_CORE = ("numpy.core", "numpy._core")

#: What ``torch.load(weights_only=True)`` allows, plus what numpy arrays (numpy 1.x and 2.x, pickle protocols
#: 2 to 5) and joblib dumps of them need; nothing that runs code of the file's choosing.
SAFE_GLOBALS: frozenset[str] = frozenset(
    {
        "collections.OrderedDict",
        "collections.Counter",
        "torch.nn.parameter.Parameter",
        "torch.serialization._get_layout",
        "torch.Tensor",
        "torch.Size",
        "torch.device",
        "torch.storage.UntypedStorage",
        "torch.storage.TypedStorage",
        "torch.UntypedStorage",
        "torch.TypedStorage",
        "torch._tensor._rebuild_from_type_v2",
        *(f"torch._utils.{name}" for name in _REBUILD),
        *(f"torch.{kind}Storage" for kind in _STORAGES),
        *(f"torch.{kind}Tensor" for kind in _TENSORS),
        *(f"torch.{dtype}" for dtype in _DTYPES),
        *(f"torch.{scheme}" for scheme in _QSCHEMES),
        *(f"torch.{layout}" for layout in _LAYOUTS),
        *(f"{core}.multiarray._reconstruct" for core in _NUMPY_CORE),
        *(f"{core}.multiarray.scalar" for core in _NUMPY_CORE),
        *(f"{core}.numeric._frombuffer" for core in _NUMPY_CORE),
        "numpy.ndarray",
        "numpy.dtype",
        *(
            f"numpy.dtypes.{kind}DType"
            for kind in (
                "Float16",
                "Float32",
                "Float64",
                "Int8",
                "Int16",
                "Int32",
                "Int64",
                "UInt8",
                "UInt16",
                "UInt32",
                "UInt64",
                "Bool",
                "Complex64",
                "Complex128",
                "LongDouble",
            )
        ),
        "joblib.numpy_pickle.NumpyArrayWrapper",
        "_codecs.encode",
        *(
            f"{b}.{name}"
            for b in ("builtins", "__builtin__")
            for name in ("set", "frozenset", "slice", "complex", "bytearray")
        ),
    }
)
#: TorchScript archives name their classes ``__torch__.…``: the TorchScript runtime builds them from the
#: archive's own ``code/``, not by a Python import (``torch.load`` hands such archives to ``torch.jit.load``).
#: Its pickles also call ``torch.jit._pickle``'s list builders, which return their argument.
TORCHSCRIPT_PREFIXES = ("__torch__.", "torch.jit._pickle.")
_HINT = "Use --pickle-policy warn to import it anyway"
_TORCHSCRIPT_HINT = "Use --torchscript-policy warn to import it anyway"
#: Why a TorchScript archive is refused whatever its pickles import.
TORCHSCRIPT_FINDING = (
    "a TorchScript archive: its code (code/, and the __setstate__ of its classes) runs when torch.jit.load or "
    "torch.load(weights_only=False) loads it, and can read and write any file; not loaded"
)


class PickleVerifier(Verifier):
    """Pickles a loader would run, judged against an allow-list; TorchScript archives under a policy of their own."""

    name = "pickle"

    def __init__(
        self,
        policy: Policy | str = Policy.FAIL,
        *,
        extra_safe: frozenset[str] = frozenset(),
        torchscript: Policy | str = Policy.FAIL,
    ):
        self.policy = Policy.parse(policy, "pickle")
        self.torchscript = Policy.parse(torchscript, "torchscript")
        self.safe = SAFE_GLOBALS | extra_safe

    def applies_to(self, file: ArtifactFile) -> bool:
        # Every file: what a loader would unpickle is decided from its name and its bytes together.
        return self.policy is not Policy.OFF or self.torchscript is not Policy.OFF

    def start(self, file: ArtifactFile) -> VerifierSession:
        return _PickleSession(self, file)

    def unsafe(self, imports: list[str], torchscript: bool) -> list[str]:
        return sorted(
            {g for g in imports if g not in self.safe and not (torchscript and g.startswith(TORCHSCRIPT_PREFIXES))}
        )


class _PickleSession(ThreadedSession[Findings]):
    def __init__(self, verifier: PickleVerifier, file: ArtifactFile) -> None:
        self._v = verifier
        super().__init__(file)

    def parse(self, feed: Reader) -> Findings:
        return scan(feed, self.file.path)

    def verdict(self, result: Findings | None, error: BaseException | None) -> Verdict:
        findings = result or getattr(error, "findings", None) or Findings()
        imports = findings.imports
        unsafe = self._v.unsafe(imports, findings.torchscript)
        pickles = [{"where": where, "imports": sorted(set(names))} for where, names in findings.pickles]
        top = findings.formats[0] if findings.formats else "empty"
        count = findings.count
        described = (
            top
            if top in ("pickle", "torch legacy") or top.endswith("pickles")
            else f"{top} ({count} pickle{'s' if count > 1 else ''})"
        )
        data: dict[str, Any] = {
            "format": described if count else "not a pickle",
            "content": ", ".join(dict.fromkeys(findings.formats)) or "empty",
            "imports": sorted(imports),
            "unsafe": unsafe,
            "pickles": pickles,
            "pickle_count": count,
        }
        problems: list[str] = []
        if unsafe:
            listed = ", ".join(unsafe[:8]) + (f" and {len(unsafe) - 8} more" if len(unsafe) > 8 else "")
            problems.append(f"unsafe pickle: would import {listed} when loaded; not unpickled")
        if error is not None:
            reason = str(error) if isinstance(error, Unscannable) else f"scanner error {type(error).__name__}: {error}"
            data["problem"] = reason
            problems.append(f"cannot vouch for this file: {reason}; not unpickled")
        clean = f"{data['format']}: only safe imports" if count else f"not a pickle ({data['content']})"
        if self._v.policy is Policy.OFF:  # only the TorchScript check asked for this scan
            problems, clean = [], f"pickles not judged (policy off): {data['content']}"
        verdict = judge(self._v.name, self._v.policy, problems, clean=clean, data=data, hint=_HINT)
        if findings.torchscript and self._v.torchscript is not Policy.OFF:
            return _with_torchscript(verdict, self._v.torchscript)
        return verdict


def _with_torchscript(pickles: Verdict, policy: Policy) -> Verdict:
    """The pickle verdict (under --pickle-policy) joined with the TorchScript finding (under its own policy)."""
    data = {**pickles.data, "torchscript": True}
    if policy is Policy.FAIL:
        hint = _TORCHSCRIPT_HINT if pickles.ok else f"{_HINT}; {_TORCHSCRIPT_HINT[0].lower()}{_TORCHSCRIPT_HINT[1:]}"
        details = [] if pickles.ok else [pickles.detail.rsplit(". Use ", 1)[0]]
        return Verdict(pickles.verifier, False, "; ".join([*details, TORCHSCRIPT_FINDING]) + f". {hint}", data)
    warning = "; ".join(filter(None, [data.get("warning"), TORCHSCRIPT_FINDING]))
    data["warning"] = warning
    if not pickles.ok:
        return Verdict(pickles.verifier, False, pickles.detail, data)
    return Verdict(pickles.verifier, True, f"warning (policy warn): {warning}", data)
