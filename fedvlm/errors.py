"""User-facing errors.

A :class:`UserError` is a mistake in what the user asked for (config, data, paths). The CLI prints
its one-line message, exits with status 2 and shows no traceback; nothing on disk is touched.

The message is one line by construction: whatever a message quotes (a value from a YAML file, a
path with a newline in it, a class name read from a label file) has its line breaks and other
control characters escaped, so no input can split the line the CLI prints or send escape
sequences to the terminal (docs/RELIABILITY.md, section 6).
"""

# Every character str.splitlines() breaks on and every other control character but the tab,
# each written as its escape (\n, \x1b, \x85, \u2028 ...).
_CONTROLS = [chr(c) for c in range(32) if chr(c) != "\t"] + ["\x7f", "\x85", "\u2028", "\u2029"]
_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in _CONTROLS}
_SHOWN_CHARACTERS = 120


class UserError(Exception):
    """A one-line, actionable message about bad input: name the key/file/value and what is expected."""

    def __init__(self, message: object = ""):
        super().__init__(str(message).translate(_LINE_BREAKS))


class ConfigError(UserError):
    """An invalid config key or value."""


class DataError(UserError):
    """A missing or malformed dataset, or an unreadable file."""


def shown(value: object, limit: int = _SHOWN_CHARACTERS) -> str:
    """``repr(value)`` for a message, cut to ``limit`` characters: a user's value may be a
    thousand-digit number or a long list, and the line must stay readable."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's digit limit for str()
        text = f"<{type(value).__name__} too large to print>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
