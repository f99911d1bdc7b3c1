"""Signed models: signatures made by the real ``model-signing`` library, imported through the CLI from the local hub.

Each model is written to a folder, signed there as its publisher would
(``model_signing`` with an elliptic-curve key, or a certificate chained to a
CA made here), and served by the hub with the signature as ``model.sig``.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import unicodedata
from pathlib import Path

import model_signing
import numpy
import pytest
import safetensors.numpy
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from artifact_import import (
    MANIFEST_PATH,
    ArtifactStorageImportStep,
    ImportService,
    ModelTarget,
    SignatureError,
    SignatureSettings,
    StorageTarget,
    VFSStorage,
)

from .conftest import fast_registry, files_under, repo_name, run_cli
from .hub import LocalHub

#: Weights as safetensors writes them, above the hub's LFS threshold (their sha256 is in the listing).
WEIGHTS = safetensors.numpy.save({"embed": numpy.arange(16384, dtype=numpy.float32).reshape(128, 128)})
MODEL: dict[str, bytes] = {
    "config.json": b'{"hidden_size": 8}',
    "tokenizer/tokenizer.json": b'{"vocab": {"a": 0}}',
    "model.safetensors": WEIGHTS,
}
#: Every Hub repository has one; model_signing leaves git's files out of a signature.
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def _key(folder: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / f"{name}.key", folder / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


def _write(folder: Path, files: dict[str, bytes]) -> Path:
    for path, content in files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(content)
    return folder


def _hashing() -> model_signing.hashing.Config:
    # What `model_signing sign` does: the signature file and git's files are not part of what is signed.
    return model_signing.hashing.Config().set_ignored_paths(paths=["model.sig"], ignore_git_paths=True)


def sign_with_key(tmp_path: Path, files: dict[str, bytes], private: Path) -> bytes:
    model = _write(tmp_path / f"signed-{private.stem}-{len(list(tmp_path.iterdir()))}", files)
    model_signing.signing.Config().use_elliptic_key_signer(private_key=private).set_hashing_config(_hashing()).sign(
        model, model / "model.sig"
    )
    return (model / "model.sig").read_bytes()


def _certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[str, ec.EllipticCurvePrivateKey] | None, *, ca: bool
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer if issuer is not None else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(path: Path, certificate: x509.Certificate) -> Path:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def certificate_authority(tmp_path: Path, name: str) -> tuple[Path, Path, Path]:
    """A root CA and a signing certificate it issued: (root PEM, signing key, signing certificate PEM)."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _pem(tmp_path / f"{name}-root.pem", _certificate(f"{name} root", root_key, None, ca=True))
    signer_key = ec.generate_private_key(ec.SECP384R1())
    leaf = _certificate(f"{name} model signer", signer_key, (f"{name} root", root_key), ca=False)
    key = tmp_path / f"{name}-signer.key"
    key.write_bytes(
        signer_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return root, key, _pem(tmp_path / f"{name}-signer.pem", leaf)


def serve(hub: LocalHub, files: dict[str, bytes], signature: bytes | None) -> str:
    repo = repo_name("signed")
    served: dict[str, bytes | int] = {".gitattributes": GITATTRIBUTES, **files}
    if signature is not None:
        served["model.sig"] = signature
    hub.create_repo(repo, served)
    return repo


@pytest.fixture
def signer(tmp_path: Path) -> tuple[Path, Path]:
    return _key(tmp_path, "publisher")


def _import(repo: str, dest: Path, *args: str) -> tuple[int, dict[str, object], str]:
    proc = run_cli("import", f"hf://{repo}", "--to", str(dest), "--json", *args)
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def _fetched(hub: LocalHub) -> set[str]:
    return {path for method, path, _ in hub.requests if method == "GET"}


def test_a_model_signed_with_a_key_imports_and_says_who_signed(
    hub: LocalHub, tmp_path: Path, signer: tuple[Path, Path]
) -> None:
    private, public = signer
    signature = sign_with_key(tmp_path, MODEL, private)
    repo = serve(hub, MODEL, signature)
    dest = tmp_path / "m"
    code, result, _ = _import(repo, dest, "--signature-policy", "require", "--signature-key", str(public))
    assert code == 0, result
    verdict = result["signature"]
    assert isinstance(verdict, dict)
    assert verdict["status"] == "verified" and verdict["method"] == "key" and verdict["policy"] == "require"
    fingerprint = verdict["signer"]
    assert isinstance(fingerprint, str) and fingerprint.startswith("public key sha256:")
    assert verdict["files_signed"] == 3
    assert verdict["not_covered"] == [".gitattributes", "model.sig"]
    on_disk = files_under(dest)
    # The signature travels with the model: model_signing verify works on the destination too.
    assert on_disk["model.sig"] == signature
    model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public).set_hashing_config(
        model_signing.hashing.Config().set_ignored_paths(paths=["model.sig", ".artifact-import", ".cache"])
    ).verify(dest, dest / "model.sig")
    assert json.loads(on_disk[MANIFEST_PATH])["signature"] == verdict

    proc = run_cli("verify", str(dest), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["signature"] == verdict
    proc = run_cli("verify", str(dest))
    assert f"signed: {verdict['file']} verified at import, by {fingerprint}" in proc.stdout


def test_a_model_signed_with_a_certificate_chain_imports(hub: LocalHub, tmp_path: Path) -> None:
    root, key, leaf = certificate_authority(tmp_path, "publisher")
    model = _write(tmp_path / "to-sign", MODEL)
    model_signing.signing.Config().use_certificate_signer(
        private_key=key, signing_certificate=leaf, certificate_chain=[root]
    ).set_hashing_config(_hashing()).sign(model, model / "model.sig")
    repo = serve(hub, MODEL, (model / "model.sig").read_bytes())
    code, result, _ = _import(repo, tmp_path / "m", "--signature-certificate", str(root))
    assert code == 0, result
    verdict = result["signature"]
    assert isinstance(verdict, dict)
    assert verdict["status"] == "verified" and verdict["method"] == "certificate"
    assert verdict["policy"] == "if-present", "a signer given without a policy checks a signature that is there"
    assert "CN=publisher model signer" in str(verdict["signer"])

    # A certificate issued by another CA is another signer.
    other_root, _, _ = certificate_authority(tmp_path, "someone-else")
    code, result, stderr = _import(repo, tmp_path / "m2", "--signature-certificate", str(other_root))
    assert code == 3
    assert "does not verify against the certificate chain" in stderr
    assert not (tmp_path / "m2").exists() or files_under(tmp_path / "m2") == {}


def test_a_file_changed_after_signing_is_refused_before_it_is_fetched(
    hub: LocalHub, tmp_path: Path, signer: tuple[Path, Path]
) -> None:
    private, public = signer
    signature = sign_with_key(tmp_path, MODEL, private)
    tampered = {**MODEL, "model.safetensors": MODEL["model.safetensors"][:-1] + b"\x00"}
    repo = serve(hub, tampered, signature)
    code, result, stderr = _import(repo, tmp_path / "m", "--signature-key", str(public))
    assert code == 3, result
    assert result["error"]["type"] == "SignatureError"  # type: ignore[index]
    assert "changed: model.safetensors" in stderr
    assert _fetched(hub) == {"model.sig"}, "the listing's sha256 already disagrees with the signature"
    assert not (tmp_path / "m").exists() or files_under(tmp_path / "m") == {}


def test_a_small_file_changed_after_signing_is_refused_by_the_sha256_the_import_computes(
    hub: LocalHub, tmp_path: Path, signer: tuple[Path, Path]
) -> None:
    """Small files are published with a git sha1 only: the signed sha256 is held to what the import computed."""
    private, public = signer
    signature = sign_with_key(tmp_path, MODEL, private)
    repo = serve(hub, {**MODEL, "config.json": b'{"hidden_size": 9}'}, signature)
    dest = tmp_path / "m"
    code, _, stderr = _import(repo, dest, "--signature-key", str(public))
    assert code == 3
    assert "changed: config.json (sha256 " in stderr and "Nothing was archived" in stderr
    assert not dest.exists() or files_under(dest) == {}


def test_a_signature_by_another_key_is_refused(hub: LocalHub, tmp_path: Path, signer: tuple[Path, Path]) -> None:
    _, public = signer
    impostor, _ = _key(tmp_path, "impostor")
    repo = serve(hub, MODEL, sign_with_key(tmp_path, MODEL, impostor))
    code, result, stderr = _import(repo, tmp_path / "m", "--signature-key", str(public))
    assert code == 3, result
    assert f"model.sig: the signature does not verify against the public key {public}" in stderr
    assert _fetched(hub) == {"model.sig"}
    assert not (tmp_path / "m").exists() or files_under(tmp_path / "m") == {}


def test_a_statement_altered_after_signing_is_refused(hub: LocalHub, tmp_path: Path, signer: tuple[Path, Path]) -> None:
    """An attacker who swaps a weight also rewrites its digest in the signed statement: the signature breaks."""
    private, public = signer
    tampered = {**MODEL, "model.safetensors": WEIGHTS.replace(b"\x00\x00\x80?", b"\x00\x00\x80\xbf", 1)}
    bundle = json.loads(sign_with_key(tmp_path, MODEL, private))
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    for resource in statement["predicate"]["resources"]:
        if resource["name"] == "model.safetensors":
            resource["digest"] = hashlib.sha256(tampered["model.safetensors"]).hexdigest()
    # And the statement's own root digest over the resources, so that only the signature can tell.
    root = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in statement["predicate"]["resources"]))
    statement["subject"][0]["digest"]["sha256"] = root.hexdigest()
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    repo = serve(hub, tampered, json.dumps(bundle).encode())
    code, _, stderr = _import(repo, tmp_path / "m", "--signature-key", str(public))
    assert code == 3
    assert "the signature does not verify against the public key" in stderr
    assert _fetched(hub) == {"model.sig"}


def test_require_refuses_a_model_without_a_signature(hub: LocalHub, tmp_path: Path, signer: tuple[Path, Path]) -> None:
    _, public = signer
    repo = serve(hub, MODEL, None)
    code, result, stderr = _import(
        repo, tmp_path / "m", "--signature-policy", "require", "--signature-key", str(public)
    )
    assert code == 3, result
    assert (
        "no signature (model.sig) in the source, and the signature policy (require) refuses an unsigned model" in stderr
    )
    assert _fetched(hub) == set(), "nothing is fetched"

    # if-present lets it through, and says so.
    code, result, _ = _import(repo, tmp_path / "m", "--signature-key", str(public))
    assert code == 0
    assert result["signature"] == {
        "status": "unsigned",
        "policy": "if-present",
        "method": None,
        "signer": None,
        "file": None,
        "sha256": None,
        "files_signed": 0,
        "not_covered": [],
        "signed_not_selected": 0,
    }


def test_an_unsigned_extra_file_is_refused(hub: LocalHub, tmp_path: Path, signer: tuple[Path, Path]) -> None:
    private, public = signer
    signature = sign_with_key(tmp_path, MODEL, private)
    # Where a loader looks (a nested .gitattributes is not git's: only the root's is left out of a signature).
    repo = serve(hub, {**MODEL, "extra/pytorch_model.bin": b"\x80\x02}q\x00.", "sub/.gitattributes": b"x"}, signature)
    code, _, stderr = _import(repo, tmp_path / "m", "--signature-key", str(public))
    assert code == 3
    assert "not signed: extra/pytorch_model.bin, sub/.gitattributes" in stderr
    assert _fetched(hub) == {"model.sig"}


def test_a_signed_file_missing_from_the_source_is_refused(
    hub: LocalHub, tmp_path: Path, signer: tuple[Path, Path]
) -> None:
    private, public = signer
    signature = sign_with_key(tmp_path, MODEL, private)
    repo = serve(hub, {p: c for p, c in MODEL.items() if p != "tokenizer/tokenizer.json"}, signature)
    code, _, stderr = _import(repo, tmp_path / "m", "--signature-key", str(public))
    assert code == 3
    assert "signed but not in the source: tokenizer/tokenizer.json" in stderr

    # Left out by the user's selection, it is not missing: the rest is held to the signature, and the
    # signature itself comes along whatever the filters say.
    repo = serve(hub, MODEL, signature)
    code, result, _ = _import(repo, tmp_path / "m", "--signature-key", str(public), "--include", "*.safetensors")
    assert code == 0, result
    assert set(files_under(tmp_path / "m")) == {"model.safetensors", "model.sig", MANIFEST_PATH}
    verdict = result["signature"]
    assert isinstance(verdict, dict)
    assert verdict["files_signed"] == 1 and verdict["signed_not_selected"] == 2


def test_names_are_compared_as_unicode_nfc(hub: LocalHub, tmp_path: Path, signer: tuple[Path, Path]) -> None:
    """A publisher on a filesystem that decomposes accents signs NFD names; the repository has them in NFC."""
    private, public = signer
    nfc = unicodedata.normalize("NFC", "vocabulaire-é.json")
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    signature = sign_with_key(tmp_path, {**MODEL, nfd: b"{}"}, private)
    statement = json.loads(base64.b64decode(json.loads(signature)["dsseEnvelope"]["payload"]))
    assert nfd in {r["name"] for r in statement["predicate"]["resources"]}
    repo = serve(hub, {**MODEL, nfc: b"{}"}, signature)
    code, result, _ = _import(repo, tmp_path / "m", "--signature-key", str(public))
    assert code == 0, result


def test_importing_again_holds_the_files_already_there_to_the_signature(
    hub: LocalHub, tmp_path: Path, signer: tuple[Path, Path]
) -> None:
    private, public = signer
    repo = serve(hub, MODEL, sign_with_key(tmp_path, MODEL, private))
    dest = tmp_path / "m"
    assert _import(repo, dest, "--signature-key", str(public))[0] == 0
    hub.requests.clear()
    code, result, _ = _import(repo, dest, "--signature-key", str(public))
    assert code == 0
    assert result["skipped_count"] == 5 and _fetched(hub) == {"model.sig"}
    assert result["signature"]["status"] == "verified"  # type: ignore[index]


def test_the_signer_comes_from_the_config_file(hub: LocalHub, tmp_path: Path, signer: tuple[Path, Path]) -> None:
    _, public = signer
    repo = serve(hub, MODEL, None)
    config = tmp_path / "conf" / "import.toml"
    config.parent.mkdir()
    (config.parent / "signer.pub").write_bytes(public.read_bytes())
    config.write_text('[verify.signature]\npolicy = "require"\npublic-key = "signer.pub"\n')
    proc = run_cli("--config", str(config), "import", f"hf://{repo}", "--to", str(tmp_path / "m"))
    assert proc.returncode == 3, proc.stderr
    assert "refuses an unsigned model" in proc.stderr
    # The command line's policy wins over the file's.
    proc = run_cli(
        "--config", str(config), "import", f"hf://{repo}", "--to", str(tmp_path / "m"), "--signature-policy", "off"
    )
    assert proc.returncode == 0, proc.stderr

    config.write_text('[verify.signature]\npolicy = "always"\n')
    proc = run_cli("--config", str(config), "import", f"hf://{repo}", "--to", str(tmp_path / "m"))
    assert proc.returncode == 2
    assert f"{config}:2: verify.signature.policy: must be" in proc.stderr


def test_a_policy_without_a_signer_is_a_usage_error(hub: LocalHub, tmp_path: Path) -> None:
    repo = serve(hub, MODEL, None)
    proc = run_cli("import", f"hf://{repo}", "--to", str(tmp_path / "m"), "--signature-policy", "require")
    assert proc.returncode == 2
    assert "--signature-policy require needs the signer to trust: --signature-key PEM" in proc.stderr
    proc = run_cli("import", f"hf://{repo}", "--to", str(tmp_path / "m"), "--signature-identity", "me@example.com")
    assert proc.returncode == 2
    assert "give both --signature-identity and --signature-issuer" in proc.stderr
    assert _fetched(hub) == set()


def test_a_file_an_unsigned_import_left_is_held_to_the_signature_too(
    hub: LocalHub, tmp_path: Path, signer: tuple[Path, Path]
) -> None:
    """A small file (no sha256 published) imported earlier without a signature check is not fetched again, but
    its recorded sha256 must still be the signed one: the last gate covers files already there."""
    private, public = signer
    signature = sign_with_key(tmp_path, MODEL, private)
    repo = serve(hub, {**MODEL, "config.json": b'{"hidden_size": 9}'}, signature)
    dest = tmp_path / "m"
    assert _import(repo, dest)[0] == 0, "no signer given: not checked"
    code, result, stderr = _import(repo, dest, "--signature-key", str(public))
    assert code == 3, result
    assert "changed: config.json (sha256 " in stderr
    manifest = json.loads((dest / MANIFEST_PATH).read_bytes())
    assert manifest["signature"]["status"] == "not checked", "the refused import recorded nothing"


async def test_a_storage_proxy_holds_its_imports_to_the_signature_of_its_config(
    hub: LocalHub, tmp_path: Path, signer: tuple[Path, Path]
) -> None:
    """`serve` passes [verify.signature] to the service: a proxy with policy require refuses an unsigned model."""
    private, public = signer
    signed = serve(hub, MODEL, sign_with_key(tmp_path, MODEL, private))
    unsigned = serve(hub, MODEL, None)
    registry = fast_registry()
    service = ImportService(
        {registry.name: registry}, signature=SignatureSettings(policy="require", public_key=str(public))
    )
    try:
        results = []
        for repo in (signed, unsigned):
            storage = VFSStorage("models", tmp_path / repo.replace("/", "-"))
            task = await service.start_import(
                ModelTarget.from_uri(f"hf://{repo}"),
                registry.name,
                storage_step_mappings={ArtifactStorageImportStep.ARCHIVE: StorageTarget(storage)},
            )
            try:
                results.append((await service.wait(task))[0].signature.status)
            except SignatureError as exc:
                results.append(exc.message)
    finally:
        await service.aclose()
    assert results[0] == "verified"
    assert (
        "no signature (model.sig) in the source, and the signature policy (require) refuses an unsigned model"
        in results[1]
    )


def test_a_key_that_cannot_check_signatures_and_a_signature_that_is_not_one(
    hub: LocalHub, tmp_path: Path, signer: tuple[Path, Path]
) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    rsa_public = tmp_path / "rsa.pub"
    rsa_public.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    private, public = signer
    repo = serve(hub, MODEL, sign_with_key(tmp_path, MODEL, private))
    code, _, stderr = _import(repo, tmp_path / "m", "--signature-key", str(rsa_public))
    assert code == 2
    assert f"cannot check signatures by the public key {rsa_public}" in stderr

    garbage = serve(hub, MODEL, b'{"mediaType": "not a bundle"}')
    code, _, stderr = _import(garbage, tmp_path / "m", "--signature-key", str(public))
    assert code == 3
    assert "model.sig: not a model signature model-signing can read" in stderr
    assert not (tmp_path / "m").exists() or files_under(tmp_path / "m") == {}


def test_a_signature_over_shards_is_refused_with_what_to_do_instead(
    hub: LocalHub, tmp_path: Path, signer: tuple[Path, Path]
) -> None:
    """Shard digests cannot be held to the per-file sha256 the import computes: say so, do not pass it."""
    private, public = signer
    model = _write(tmp_path / "sharded", MODEL)
    hashing = model_signing.hashing.Config().use_shard_serialization(shard_size=4096)
    hashing.set_ignored_paths(paths=["model.sig"], ignore_git_paths=True)
    model_signing.signing.Config().use_elliptic_key_signer(private_key=private).set_hashing_config(hashing).sign(
        model, model / "model.sig"
    )
    repo = serve(hub, MODEL, (model / "model.sig").read_bytes())
    code, _, stderr = _import(repo, tmp_path / "m", "--signature-key", str(public))
    assert code == 3
    assert "the signature holds shards digests of type sha256" in stderr
    assert "import with --signature-policy off, then run model_signing verify on the destination" in stderr
    assert _fetched(hub) == {"model.sig"}
