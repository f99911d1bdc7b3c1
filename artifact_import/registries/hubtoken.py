"""The Hub token ``huggingface_hub.get_token()`` finds, without loading its auth module where there is none.

``huggingface_hub.utils._auth``, where ``get_token`` lives, imports ``huggingface_hub.errors`` (httpx) and
``utils._fixes`` (filelock, yaml) when it is loaded: 0.05 to 0.09 CPU-seconds, paid by every import from the Hub,
most of which have no token at all. ``get_token`` looks in four places, in order (huggingface_hub 2.x): an OIDC
exchange when ``HF_OIDC_RESOURCE`` is set, ``HF_TOKEN`` / ``HUGGING_FACE_HUB_TOKEN``, the file at
``constants.HF_TOKEN_PATH`` (an OAuth login's token refreshed when near expiry), and Google Colab's secrets
vault (only inside IPython). When none of them can give anything, the answer is ``None`` and nothing is loaded;
otherwise ``get_token`` itself is asked, so that every token, and every error, is its own.
``tests/test_hub_token.py`` holds both to the same answers in real environments, and fails when
``get_token`` looks somewhere new.
"""

from __future__ import annotations

import builtins
import os
from pathlib import Path

from huggingface_hub import constants

#: The variables ``get_token`` reads a token (or the OIDC resource to get one for) from.
TOKEN_VARIABLES = ("HF_OIDC_RESOURCE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def hub_token() -> str | None:
    """What ``huggingface_hub.get_token()`` answers now (its errors, such as a failed OIDC exchange, too)."""
    if _nothing_to_find():
        return None
    from huggingface_hub import get_token

    return get_token()


def _nothing_to_find() -> bool:
    """Whether ``get_token`` would certainly answer ``None``: no variable set, no token file, no notebook."""
    if any(os.environ.get(name) for name in TOKEN_VARIABLES):
        return False
    # huggingface_hub looks for Colab's vault only where ``get_ipython`` is a builtin (an IPython shell).
    if hasattr(builtins, "get_ipython"):
        return False
    try:
        # Path(): as get_token reads it (an empty HF_TOKEN_PATH is ".", a directory, which it fails on).
        os.stat(Path(constants.HF_TOKEN_PATH))
    except FileNotFoundError:
        return True  # get_token's read fails the same way, which it takes as no token
    except OSError:
        return False  # its read fails too, and it says so
    return False
