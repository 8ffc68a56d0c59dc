"""Training losses by name (REFERENCE sections 3 and 5).

A loss is a `Loss`: `init(num_classes)` gives its state (a pytree; empty for
stateless losses) and `__call__(logits, targets, batch, state)` returns
`(loss, new_state)`. The training loop carries the state in its train state
and checkpoints it, so losses that keep per-recording running averages, a
label table or a teacher fit without changing the loop.

`targets` are soft targets `[batch, classes]` (one-hot, or mixed by mixup).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import optax


@dataclasses.dataclass(frozen=True)
class Loss:
  """A named loss with optional state."""
  fn: Callable[..., tuple[jax.Array, Any]]
  init: Callable[[int], Any] = lambda num_classes: ()

  def __call__(self, logits, targets, batch, state):
    return self.fn(logits, targets, batch, state)


def _softmax_cross_entropy(logits, targets, batch, state):
  del batch
  return optax.softmax_cross_entropy(logits, targets).mean(), state


def _assume_negative_bce(logits, targets, batch, state):
  """Sigmoid BCE against the (soft) label, summed over classes."""
  del batch
  return optax.sigmoid_binary_cross_entropy(logits, targets).sum(-1).mean(), state


REGISTRY: dict[str, Loss] = {
    "softmax_ce": Loss(_softmax_cross_entropy),
    "assume_negative_bce": Loss(_assume_negative_bce),
}


def get(name: str) -> Loss:
  try:
    return REGISTRY[name]
  except KeyError:
    raise ValueError(f"unknown loss {name!r}; registered: "
                     f"{sorted(REGISTRY)}") from None


def is_multilabel(name: str) -> bool:
  """Sigmoid heads start with bias log(1/C)."""
  return name != "softmax_ce"
