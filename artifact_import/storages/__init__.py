"""Destinations: every one implements :class:`AbstractStorage`."""
