"""User-facing errors.

`GdmError` is raised for bad input (config, files, checkpoints). The CLI prints its message
without a traceback and exits non-zero; library callers can catch it.
"""


class GdmError(Exception):
    """A problem with user input that the message fully explains."""


class ConfigError(GdmError):
    """Invalid params.yaml / override: the message names the key path, value and what is allowed."""


class DataError(GdmError):
    """A dataset source that cannot be read: the message names the file."""


class CheckpointError(GdmError):
    """A checkpoint that cannot be loaded safely or does not match the model."""
