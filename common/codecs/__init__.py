"""Tensor codecs: the interface, the registry, and each codec family in its own module."""
