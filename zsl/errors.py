"""Exceptions shared across the package (the CLI turns each into one line)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad config name, key, value or override."""


class LeakageError(RuntimeError):
    """A model asked for unseen-class information it must not see during training."""


class ModelLoadError(RuntimeError):
    """Pre-trained weights a model needs (e.g. CLIP's) could not be loaded."""


class RunDirError(RuntimeError):
    """The run directory cannot be created or written (permissions, a name too long, ...)."""


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, unsafe to unpickle or of another model."""


class RunLockedError(RuntimeError):
    """Another live process owns the run directory."""
