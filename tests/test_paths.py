from __future__ import annotations

import pytest

from artifact_import import ConfigError, ModelTarget, UnsafePathError
from artifact_import.paths import check_listing, path_problem


@pytest.mark.parametrize(
    "path",
    [
        "config.json",
        "tokenizer/tokenizer.json",
        "a/b/c/d.bin",
        ".gitattributes",
        "weights/model-00001-of-00002.safetensors",
        "name with spaces.txt",
        "ünïcödé/файл.bin",
    ],
)
def test_ordinary_repository_paths_are_accepted(path: str) -> None:
    assert path_problem(path) is None


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("", "empty"),
        ("/etc/passwd", "absolute"),
        ("../outside", "'..'"),
        ("a/../../outside", "'..'"),
        ("a/..", "'..'"),
        ("a\\..\\b", "backslash"),
        ("evil\x00.bin", "NUL"),
        ("new\nline", "control"),
        ("C:/Windows/x", "drive"),
        ("a//b", "empty or '.'"),
        ("./a", "empty or '.'"),
        ("a/", "empty or '.'"),
        (".artifact-import/manifest.json", "reserved"),
    ],
)
def test_unsafe_paths_are_named_with_a_reason(path: str, reason: str) -> None:
    problem = path_problem(path)
    assert problem is not None and reason in problem


def test_a_listing_is_refused_whole_naming_every_offender() -> None:
    with pytest.raises(UnsafePathError) as info:
        check_listing(["ok.json", "../escape.bin", "fine/also.txt", "/abs"])
    assert [p for p, _ in info.value.offending] == ["../escape.bin", "/abs"]
    assert "'../escape.bin'" in str(info.value) and "'/abs'" in str(info.value)
    assert "Nothing was written" in str(info.value)


def test_file_and_folder_of_the_same_name_collide() -> None:
    with pytest.raises(UnsafePathError, match="both a file and a folder"):
        check_listing(["model", "model/weights.bin"])


def test_names_differing_only_in_case_collide() -> None:
    with pytest.raises(UnsafePathError, match="collides"):
        check_listing(["README.md", "readme.md"])


def test_names_differing_only_in_unicode_normalisation_collide() -> None:
    """``é`` composed and decomposed are one name on macOS and normalising servers."""
    composed, decomposed = "caf\u00e9/model.bin", "cafe\u0301/model.bin"
    assert composed != decomposed
    with pytest.raises(UnsafePathError, match="collides"):
        check_listing([composed, decomposed])
    with pytest.raises(UnsafePathError, match="both a file and a folder"):
        check_listing(["caf\u00e9", decomposed])
    check_listing([composed, "cafe/model.bin"])  # different names stay different


@pytest.mark.parametrize(
    ("uri", "repo", "rev"),
    [
        ("hf://org/name", "org/name", "main"),
        ("hf://org/name@v1.0", "org/name", "v1.0"),
        (
            "hf://Org-1/model.name_2@0123456789abcdef0123456789abcdef01234567",
            "Org-1/model.name_2",
            "0123456789abcdef0123456789abcdef01234567",
        ),
        ("hf://org/name@refs/pr/3", "org/name", "refs/pr/3"),
        ("hf://gpt2", "gpt2", "main"),
        ("hf://bert-base-uncased@v1", "bert-base-uncased", "v1"),
    ],
)
def test_source_uri_parsing(uri: str, repo: str, rev: str) -> None:
    target = ModelTarget.from_uri(uri)
    assert (target.repo_id, target.revision, target.repo_type) == (repo, rev, "model")
    assert target.uri == f"hf://{repo}@{rev}"


@pytest.mark.parametrize(
    ("uri", "repo_type", "repo"),
    [
        ("hf://datasets/org/corpus", "dataset", "org/corpus"),
        ("hf://datasets/squad@v2", "dataset", "squad"),
        ("hf://spaces/org/demo", "space", "org/demo"),
        ("hf://models/org/name", "model", "org/name"),
    ],
)
def test_hub_uris_name_datasets_and_spaces(uri: str, repo_type: str, repo: str) -> None:
    target = ModelTarget.from_uri(uri)
    assert (target.repo_type, target.repo_id) == (repo_type, repo)
    prefix = {"model": "", "dataset": "datasets/", "space": "spaces/"}[repo_type]
    assert target.source == f"hf://{prefix}{repo}"


@pytest.mark.parametrize(
    "uri",
    [
        "org/name",
        "hf://-name",
        "hf://org/.hidden",
        "hf://datasets/org/name/extra",
        "hf://org/name/extra",
        "gs://bucket/x",
        "hf://../etc@main",
        "hf://org/name@",
        "hf://org/na me",
        "s3://ab",
        "s3://Upper_Case",
        "s3://bucket/../escape",
        "s3://bucket/a b",
    ],
)
def test_malformed_source_uris_are_refused(uri: str) -> None:
    with pytest.raises(ConfigError):
        ModelTarget.from_uri(uri)


def test_s3_source_uris() -> None:
    target = ModelTarget.from_uri("s3://models-bucket/hub/gpt2/")
    assert (target.scheme, target.repo_id, target.revision) == ("s3", "models-bucket/hub/gpt2", "")
    assert target.uri == "s3://models-bucket/hub/gpt2"
    assert ModelTarget.from_uri("s3://models-bucket").repo_id == "models-bucket"


def test_include_and_exclude_follow_huggingface_hub_semantics() -> None:
    target = ModelTarget("o/n", include=("*.json", "tokenizer/"), exclude=("tokenizer/vocab*",))
    assert target.selects("config.json")
    assert target.selects("sub/config.json")  # fnmatch's * crosses folders, as in allow_patterns
    assert target.selects("tokenizer/merges.txt")
    assert not target.selects("tokenizer/vocab.txt")
    assert not target.selects("model.safetensors")
