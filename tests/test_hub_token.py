"""The Hub token: ``hub_token()`` answers what ``huggingface_hub.get_token()`` answers, in real environments
(variables and token files, each in a fresh process), and loads huggingface_hub's auth module only where
there is a token to find."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

#: In a fresh process: ours first (and whether it loaded huggingface_hub's auth module), then get_token's.
_BOTH = """
import json, sys

def answer(ask):
    try:
        return {"token": ask()}
    except Exception as e:
        return {"error": type(e).__name__}

from artifact_import.registries.hubtoken import hub_token
ours = answer(hub_token)
loaded = "huggingface_hub.utils._auth" in sys.modules
from huggingface_hub import get_token
print(json.dumps({"ours": ours, "loaded": loaded, "theirs": answer(get_token)}))
"""

_CLEARED = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_OIDC_RESOURCE", "HF_OIDC_ID_TOKEN", "HF_HOME")


def _both(home: Path, env: dict[str, str]) -> dict[str, object]:
    base = {k: v for k, v in os.environ.items() if k not in _CLEARED and not k.startswith(("GITHUB_", "ACTIONS_"))}
    done = subprocess.run(
        [sys.executable, "-c", _BOTH],
        env={**base, "HF_HOME": str(home), **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    answer: dict[str, object] = json.loads(done.stdout)
    return answer


def test_no_token_anywhere_is_none_without_loading_the_auth_module(tmp_path: Path) -> None:
    answer = _both(tmp_path / "hf-home", {})
    assert answer["ours"] == answer["theirs"] == {"token": None}
    assert answer["loaded"] is False


@pytest.mark.parametrize(
    ("env", "token_file", "expected"),
    [
        ({"HF_TOKEN": "hf_from_env"}, None, {"token": "hf_from_env"}),
        ({"HUGGING_FACE_HUB_TOKEN": " hf_old_name\n"}, None, {"token": "hf_old_name"}),
        ({"HF_TOKEN": "hf_first", "HUGGING_FACE_HUB_TOKEN": "hf_second"}, None, {"token": "hf_first"}),
        ({"HF_TOKEN": "  \n"}, None, {"token": None}),
        ({"HF_TOKEN": "hf_env_wins"}, "hf_in_file\n", {"token": "hf_env_wins"}),
        ({}, "hf_saved_login\n", {"token": "hf_saved_login"}),
        ({}, "", {"token": None}),
        # Asked for an OIDC exchange outside CI and without an id token: huggingface_hub refuses, so do we.
        ({"HF_OIDC_RESOURCE": "models/org/name"}, None, {"error": "OIDCError"}),
    ],
    ids=["HF_TOKEN", "old-name", "HF_TOKEN-first", "blank", "env-over-file", "file", "empty-file", "oidc"],
)
def test_the_same_token_as_huggingface_hub(
    tmp_path: Path, env: dict[str, str], token_file: str | None, expected: dict[str, object]
) -> None:
    home = tmp_path / "hf-home"
    if token_file is not None:
        home.mkdir()
        (home / "token").write_text(token_file)  # where `hf auth login` writes it
    answer = _both(home, env)
    assert answer["theirs"] == expected
    assert answer["ours"] == expected


def test_hf_token_path_is_where_the_token_is_read(tmp_path: Path) -> None:
    elsewhere = tmp_path / "secrets" / "hf"
    elsewhere.parent.mkdir()
    elsewhere.write_text("hf_elsewhere\n")
    (tmp_path / "hf-home").mkdir()
    (tmp_path / "hf-home" / "token").write_text("hf_at_home\n")
    answer = _both(tmp_path / "hf-home", {"HF_TOKEN_PATH": str(elsewhere)})
    assert answer["ours"] == answer["theirs"] == {"token": "hf_elsewhere"}


def test_a_token_path_that_is_not_a_file_fails_as_huggingface_hub_fails(tmp_path: Path) -> None:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    under_a_file = tmp_path / "plain" / "token"
    under_a_file.parent.write_text("a file, not a folder")
    answers = {
        "folder": _both(tmp_path / "h1", {"HF_TOKEN_PATH": str(folder)}),
        "dangling": _both(tmp_path / "h2", {"HF_TOKEN_PATH": str(dangling)}),
        "under-a-file": _both(tmp_path / "h3", {"HF_TOKEN_PATH": str(under_a_file)}),
        "empty": _both(tmp_path / "h4", {"HF_TOKEN_PATH": ""}),
    }
    assert {name: a["theirs"] for name, a in answers.items()} == {
        "folder": {"error": "IsADirectoryError"},
        "dangling": {"token": None},
        "under-a-file": {"error": "NotADirectoryError"},
        "empty": {"error": "IsADirectoryError"},
    }
    assert {name: a["ours"] for name, a in answers.items()} == {name: a["theirs"] for name, a in answers.items()}


def test_huggingface_hub_looks_for_a_token_where_hub_token_knows_to_look() -> None:
    """``hub_token`` answers None without asking when none of get_token's sources can give a token; a
    huggingface_hub that looks somewhere new must be read again (``artifact_import/registries/hubtoken.py``)."""
    from huggingface_hub.utils import _auth

    from artifact_import.registries.hubtoken import TOKEN_VARIABLES

    assert set(_auth.get_token.__code__.co_names) == {
        "_get_token_from_oidc",
        "_get_token_from_environment",
        "_get_token_from_file_refreshed",
        "_get_token_from_google_colab",
    }
    read = {
        c
        for f in (_auth._get_token_from_oidc, _auth._get_token_from_environment)
        for c in f.__code__.co_consts
        if isinstance(c, str) and c.isupper()
    }
    assert read - {"HF_OIDC_ID_TOKEN"} <= set(TOKEN_VARIABLES)
    assert set(_auth._get_token_from_file.__code__.co_names) >= {"HF_TOKEN_PATH"}


def test_in_a_notebook_huggingface_hub_is_asked(tmp_path: Path) -> None:
    """Inside IPython, get_token may find a token in Colab's secrets vault: it is asked, not second-guessed."""
    done = subprocess.run(
        [sys.executable, "-c", "import builtins; builtins.get_ipython = lambda: 'a shell'\n" + _BOTH],
        env={**{k: v for k, v in os.environ.items() if k not in _CLEARED}, "HF_HOME": str(tmp_path / "hf-home")},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["ours"] == answer["theirs"] == {"token": None}
    assert answer["loaded"] is True
