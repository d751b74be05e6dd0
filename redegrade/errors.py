"""Errors a user can act on. CLIs print ``str(error)`` as one line and exit with code 2."""


class RedegradeError(Exception):
    """Base class of every error redegrade raises on purpose."""


class InputError(RedegradeError):
    """An input image or argument is unusable (unreadable, wrong size, wrong range, ...)."""


class ShapeError(InputError):
    """A tensor has the wrong shape at a public entry point."""


class ConfigError(RedegradeError):
    """A configuration or checkpoint config is invalid (unknown key, bad value)."""


class CheckpointError(RedegradeError):
    """A checkpoint is missing, corrupt, fails verification or holds something we refuse to load."""


class MissingCheckpointError(CheckpointError):
    """A checkpoint is not in the cache and cannot be downloaded (offline or failed)."""


class UnknownBackendError(RedegradeError):
    """No installed backend has the requested name."""


class BackendLoadError(RedegradeError):
    """A backend exists but cannot be loaded or does not satisfy the Backend contract."""
