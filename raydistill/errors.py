"""Exceptions with one-line messages that say how to fix the problem."""


class RayDistillError(Exception):
    """Base class for every error raydistill raises on purpose."""


class ConfigError(RayDistillError, ValueError):
    """Bad user input: a config key, a source spec, a rate, a path. The CLI exits with code 2."""


class SourceUnavailable(RayDistillError):
    """A power source cannot be read on this machine (no driver, no permission, no file)."""
