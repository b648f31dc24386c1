"""The error a user's config raises, and the one line every tool prints for an error.

Kept apart from ``lm.config`` so that modules ``lm.config`` imports (``lm.hooks``) can
raise ``ConfigError`` without importing it back.
"""


class ConfigError(ValueError):
    """A config value a user set is out of range; the message is one line."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
