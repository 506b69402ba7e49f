"""Errors raised while reading a checkpoint; each names the file or tensor at fault."""


class CheckpointError(ValueError):
    """The checkpoint folder cannot be loaded: missing file, unsupported architecture, bad tensor, pickle."""
