"""Errors a user can act on. The CLI prints them as one line and exits with status 2."""


class R1kitError(Exception):
    """Bad input from the user: a malformed config, a missing file, a checkpoint that does not fit."""


class ConfigError(R1kitError, ValueError):
    """A config field is missing or invalid; the message names the field."""


class CheckpointError(R1kitError):
    """A checkpoint cannot be loaded as asked; the message names the tensor or field."""
