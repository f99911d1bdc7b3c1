"""Sources: every one implements :class:`AbstractRegistry`."""
