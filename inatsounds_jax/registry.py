"""The one registry idiom: named choices with a clear error listing them.

Models, losses, optimizers, frontend presets, evaluators and jobs are each a
`Registry`. Entries are added where they are defined:

    LOSSES = registry.Registry("loss")

    @LOSSES.register("softmax_ce")
    def ...

or `LOSSES.add("softmax_ce", obj)`, and looked up with `LOSSES.get(name)`,
which raises a `ConfigError` naming the kind, the unknown name and every
registered choice, so a config typo fails at start-up in one line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
  """A problem with what a run was given, seen before any work starts.

  A config field, or a file or folder it points at (stale records, a folder
  the corpus generator does not own, a weights file that is none). Its
  message names the field or file and the problem in a few lines; the
  command line prints it without a traceback.
  """


class Registry(Generic[T]):
  """Name -> entry, for one kind of thing (e.g. "model")."""

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: dict[str, T] = {}

  def add(self, name: str, entry: T) -> T:
    if name in self._entries:
      raise ValueError(f"{self.kind} {name!r} is already registered")
    self._entries[name] = entry
    return entry

  def register(self, name: str) -> Callable[[T], T]:
    """Decorator form of `add`."""
    return lambda entry: self.add(name, entry)

  def get(self, name: str) -> T:
    try:
      return self._entries[name]
    except KeyError:
      raise ConfigError(f"unknown {self.kind} {name!r}; choose from "
                       f"{sorted(self._entries)}") from None

  def names(self) -> list[str]:
    return sorted(self._entries)

  def __contains__(self, name: str) -> bool:
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(self.names())
