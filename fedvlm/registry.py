"""Name -> object registries: heads, algorithms, datasets, partitions and losses.

A YAML file names a component; a registry turns the name into the thing. Registering is one
decorator on the class or function (the timm/open_clip pattern)::

    HEADS = Registry("head")

    @HEADS.register("coop")
    class CoOpHead(Head): ...

Unknown names give one line listing what is accepted.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from fedvlm.errors import ConfigError, shown

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str, key: str | None = None) -> T:
        """The entry called ``name``; ``key`` is the config key reported in the error. A name that
        is not a string (a YAML list or mapping where a name belongs) is refused the same way."""
        if not isinstance(name, str) or name not in self._entries:
            where = key or self.kind
            accepted = ", ".join(sorted(self._entries))
            what = f"unknown {self.kind} {shown(name)}" if isinstance(name, str) else \
                f"expected a name, got {shown(name)}"
            raise ConfigError(f"{where}: {what}; expected one of: {accepted}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
