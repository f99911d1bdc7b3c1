"""Published 2025-26 classes where the model formats meet them: NeMo's Hydra ``_target_`` (CVE-2025-23304) and
Keras' safe-mode bypasses (CVE-2025-1550 and after). The NeMo archive is proven to run its payload with
Hydra's ``instantiate`` at the version NeMo pins, as ``restore_from`` calls it."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from artifact_import.verifiers.keras import KerasVerifier
from artifact_import.verifiers.nemo import NemoVerifier

from .conftest import repo_name, run_cli, verdict_of
from .hub import LocalHub
from .modelfiles import CHECKPOINTS
from .test_model_safety import _keras_zip, _layer, _sequential

# As NeMo's restore_from: extract the archive, load its config with OmegaConf, instantiate its sections.
NEMO_RESTORE = """
import tarfile, tempfile, os
from omegaconf import OmegaConf
import hydra.utils
with tempfile.TemporaryDirectory() as tmp:
    with tarfile.open(path) as tar:
        tar.extractall(tmp, filter="data")
    cfg = OmegaConf.load(os.path.join(tmp, "model_config.yaml"))
    for key in ("preprocessor", "encoder", "decoder", "optim"):
        if key in cfg:
            hydra.utils.instantiate(cfg[key])
"""

BENIGN_CONFIG = """\
sample_rate: 16000
preprocessor:
  _target_: nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor
  sample_rate: 16000
  features: 80
encoder:
  _target_: nemo.collections.asr.modules.ConformerEncoder
  feat_in: 80
optim:
  name: adamw
  sched: {_target_: nemo.core.optim.lr_scheduler.CosineAnnealing, max_steps: 1000}
decoder:
  _target_: "torch.nn.Linear"
  in_features: 4
  out_features: 2
"""


def _evil_config(marker: str, spelled: str = "_target_: os.system") -> str:
    return f"preprocessor:\n  {spelled}\n  _args_: ['touch {marker}']\n"


def nemo(config: str, *, gzip: bool = False) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz" if gzip else "w") as tar:
        for name, data in (
            ("./model_config.yaml", config.encode()),
            ("./model_weights.ckpt", (CHECKPOINTS / "state_dict_zip.pt").read_bytes()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_a_nemo_target_runs_its_payload_when_restored(tmp_path: Path) -> None:
    pytest.importorskip("hydra")
    marker = tmp_path / "ran"
    path = tmp_path / "model.nemo"
    path.write_bytes(nemo(_evil_config(str(marker))))
    code = f"path = {str(path)!r}\n{NEMO_RESTORE}"
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, timeout=120, check=False)
    assert marker.exists(), "hydra.utils.instantiate did not run the payload: the sample proves nothing"


@pytest.mark.parametrize("gzip", [False, True])
async def test_a_real_looking_nemo_config_passes(gzip: bool) -> None:
    verdict = await verdict_of(NemoVerifier(), "asr.nemo", nemo(BENIGN_CONFIG, gzip=gzip))
    assert verdict.ok, verdict.detail


@pytest.mark.parametrize(
    "spelled",
    [
        "_target_: os.system",
        "_target_: 'posix.system'",
        '"_target_": "subprocess.Popen"',
        "_target_: builtins.exec",
        "_target_: pkgutil.resolve_name",
        "_target_: transformers.AutoModel.from_pretrained",
        "_target_: *alias",
        "_target_: ${oc.env:TARGET}",
        "_target_: !!str os.system",
        "{_target_: os.system}",
    ],
)
async def test_nemo_targets_beyond_model_classes_are_refused(spelled: str) -> None:
    verdict = await verdict_of(NemoVerifier(), "asr.nemo", nemo(_evil_config("/nonexistent", spelled)))
    assert not verdict.ok and "_target_" in verdict.detail, verdict.detail


def test_the_cli_refuses_a_nemo_archive_whose_config_calls_code(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("nemo")
    hub.create_repo(repo, {"asr.nemo": nemo(_evil_config("/nonexistent"))})
    proc = run_cli("import", f"hf://{repo}", "--to", str(tmp_path / "m"))
    assert proc.returncode == 3, proc.stderr
    assert "asr.nemo" in proc.stderr and "os.system" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "m").exists()


# --- Keras: safe mode's own bypasses ---------------------------------------------------------------------


def _function(module: str, name: str) -> dict[str, object]:
    return {"module": module, "class_name": "function", "config": name, "registered_name": "function"}


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        # CVE-2025-1550: turn safe mode off from inside the config, then a Lambda loads.
        (_sequential(_layer("Dense", units=1, activation=_function("keras.config", "enable_unsafe_deserialization"))),
         "enable_unsafe_deserialization"),
        # CVE-2025-8747: keras.utils.get_file, reached as a Keras function, downloads to any path.
        (_sequential(_layer("Dense", units=1, activation=_function("keras.utils", "get_file"))), "get_file"),
        (_sequential(_layer("Dense", units=1, activation=_function("keras.src.saving.saving_lib", "load_model"))),
         "machinery"),
        # A layer that loads a SavedModel (and its code) from a path.
        (_sequential(_layer("TFSMLayer", filepath="/tmp/x")), "TFSMLayer"),
        # A lookup layer whose vocabulary is a file to read at load time.
        (_sequential(_layer("StringLookup", vocabulary="/etc/passwd")), "/etc/passwd"),
        # A function serialized as bytecode.
        (_sequential(_layer("Dense", units=1, activation={"class_name": "__lambda__", "config": {"code": "AA=="}})),
         "__lambda__"),
        (_sequential(_layer("Dense", units=1, activation=_function("builtins", "exec"))), "builtins"),
    ],
)  # fmt: skip
async def test_keras_safe_mode_bypass_patterns_are_refused(config: dict[str, object], reason: str) -> None:
    verdict = await verdict_of(KerasVerifier(), "model.keras", _keras_zip(config))
    assert not verdict.ok and reason in verdict.detail, verdict.detail


async def test_keras_functions_of_its_components_pass() -> None:
    config = _sequential(
        _layer("Dense", units=4, activation=_function("keras.activations", "relu")),
        _layer("StringLookup", vocabulary=["a", "b"]),
    )
    verdict = await verdict_of(KerasVerifier(), "model.keras", _keras_zip(config))
    assert verdict.ok, verdict.detail
