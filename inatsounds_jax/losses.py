"""Training losses by name.

A loss is a `Loss`: `init(num_classes)` gives its state (a pytree; empty for
stateless losses) and `__call__(logits, targets, batch, state)` returns
`(loss, new_state)`. The training loop carries the state in its train state
and checkpoints it, so losses that keep per-recording running averages, a
label table or a teacher fit without changing the loop. `multilabel` says
whether the head is read through sigmoids (and so starts with the base-rate
bias log(1/C)) or through a softmax.

`targets` are soft targets `[batch, classes]` (one-hot, or mixed by mixup).
The iNatSounds paper (Chasmai et al. 2025) compares softmax cross
entropy ("multiclass") with sigmoid BCE that assumes every other species
absent ("assume negative").
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import optax

from inatsounds_jax import registry


@dataclasses.dataclass(frozen=True)
class Loss:
  """A loss with optional state; `multilabel` for sigmoid heads."""
  fn: Callable[..., tuple[jax.Array, Any]]
  multilabel: bool
  init: Callable[[int], Any] = lambda num_classes: ()

  def __call__(self, logits, targets, batch, state):
    return self.fn(logits, targets, batch, state)


LOSSES: registry.Registry[Loss] = registry.Registry("loss")


def _softmax_cross_entropy(logits, targets, batch, state):
  del batch
  return optax.softmax_cross_entropy(logits, targets).mean(), state


def _assume_negative_bce(logits, targets, batch, state):
  """Sigmoid BCE against the (soft) label, summed over classes."""
  del batch
  value = optax.sigmoid_binary_cross_entropy(logits, targets).sum(-1).mean()
  return value, state


LOSSES.add("softmax_ce", Loss(_softmax_cross_entropy, multilabel=False))
LOSSES.add("assume_negative_bce", Loss(_assume_negative_bce, multilabel=True))
