"""The one line between a user's mistake and a bug.

`UserError` is bad input a user can fix (a recipe key, a path, a file that is not what it should be):
the CLI prints its message as one line and exits 2. Any other exception is a bug and keeps its
traceback. It is not a ValueError: a probe that treats bad input as "not usable, recompute" (is this shard
directory complete?) catches `UserError` by name, so that a bug's ValueError deep inside still surfaces.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input; the message names the file, key or line to fix."""


class ConfigError(UserError):
    """A recipe or override is invalid; the message names the key."""
