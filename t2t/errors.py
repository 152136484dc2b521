"""The one line between a user's mistake and a bug.

`UserError` is bad input a user can fix (a recipe key, a path, a file that is not what it should be):
the CLI prints its message as one line and exits 2. Any other exception is a bug and keeps its
traceback. It subclasses ValueError so that callers which probe inputs with `except ValueError`
(e.g. "is this shard directory complete?") keep treating it as "not usable".
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input; the message names the file, key or line to fix."""


class ConfigError(UserError):
    """A recipe or override is invalid; the message names the key."""
