"""User-facing errors.

A :class:`UserError` is a mistake in what the user asked for (config, data, paths). The CLI prints
its one-line message, exits with status 2 and shows no traceback; nothing on disk is touched.
"""


class UserError(Exception):
    """A one-line, actionable message about bad input: name the key/file/value and what is expected."""


class ConfigError(UserError):
    """An invalid config key or value."""


class DataError(UserError):
    """A missing or malformed dataset, or an unreadable file."""
