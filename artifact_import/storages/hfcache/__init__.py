"""The Hugging Face cache as a destination (see :class:`.storage.HFCacheStorage`)."""

from .layout import default_cache_dir
from .storage import HFCacheStorage

__all__ = ["HFCacheStorage", "default_cache_dir"]
