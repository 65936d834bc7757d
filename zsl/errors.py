"""Exceptions shared across the package (the CLI turns each into one line)."""

from __future__ import annotations

import signal


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


class TrainingInterrupted(BaseException):  # noqa: N818 - like KeyboardInterrupt
    """SIGTERM or SIGINT (Ctrl-C) stopped the run; everything finished so far is saved in the
    run directory. ``signum`` is the signal (the exit status is ``128 + signum``).

    A ``BaseException`` like ``KeyboardInterrupt``: it may be raised at any point (from the
    signal handler), and ``except Exception`` blocks must not swallow it."""

    def __init__(self, message: str, signum: int = signal.SIGTERM) -> None:
        super().__init__(message)
        self.signum = int(signum)


class ResumeError(ValueError):
    """``resume=...`` cannot continue the given run (bad path, changed config, finished run)."""
