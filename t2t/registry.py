"""One registry type for everything t2t looks up by name: pooling modes, target kinds, objectives, local eval tasks,
eval model kinds, CLI verbs.

Each registry is a `Registry` with a name for what it holds; an entry is registered once, and an unknown name is
refused in one way everywhere: one line naming the recipe key (or what was asked for), every registered name, the
name given and the nearest registered one.

    POOLINGS = Registry[Pooling]("pooling mode", ConfigError)
    POOLINGS.register("mean", Pooling(...))
    POOLINGS.get("maen", key="model.pooling")
    # ConfigError: model.pooling must be one of mean, last, eos, echo; got 'maen'; did you mean 'mean'?
"""

from __future__ import annotations

import difflib
from typing import Generic, Iterator, TypeVar

from t2t.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names to entries, in registration order."""

    def __init__(self, what: str, error: type[UserError] = UserError):
        self.what = what
        """What an entry is, in words ("pooling mode", "target kind"): the error messages name it."""
        self.error = error
        """The UserError subclass an unknown name raises (ConfigError where a recipe key names it)."""
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        assert name not in self._entries, f"{self.what} {name!r} registered twice"
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> T:
        """Remove `name` (a test's own entry, registered for the test only)."""
        return self._entries.pop(name)

    def get(self, name: str, key: str | None = None) -> T:
        """The entry `name`; `key` is where the name came from (a recipe key, a flag), for the error."""
        if name not in self._entries:
            raise self.unknown(name, key)
        return self._entries[name]

    def unknown(self, name: str, key: str | None = None) -> UserError:
        """The one-line error for a name that is not registered."""
        near = difflib.get_close_matches(str(name), list(self._entries), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        return self.error(f"{key or 'a ' + self.what} must be one of {', '.join(self._entries)}; got {name!r}{hint}")

    def names(self) -> list[str]:
        return list(self._entries)

    def items(self):
        return self._entries.items()

    def values(self):
        return self._entries.values()

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, name: str) -> T:
        return self.get(name)
