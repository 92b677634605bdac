"""Errors a user can act on. Entry points print them as one line instead of a traceback."""


class DlzooError(Exception):
    """Base class: the message says what is wrong and what to do about it."""


class ConfigError(DlzooError):
    """A configuration that cannot work (e.g. FSDP on a machine without GPUs)."""


class DataError(DlzooError):
    """Missing, empty or malformed input data."""


class CheckpointError(DlzooError):
    """A checkpoint that is missing, unreadable, or belongs to another task or family."""


class ExportError(DlzooError):
    """A model that cannot be exported (e.g. an operator the ONNX exporter does not support)."""
