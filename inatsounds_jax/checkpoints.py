"""A workdir's checkpoints and recorded config, checked both ways.

- `RunCheckpoints` keeps the latest `keep` steps (`WORKDIR/checkpoints`) and
  the best by a metric (`WORKDIR/best`) with orbax. Nothing non-finite is
  saved. A restore is checked (readable, the expected structure, finite);
  a damaged newest step is reported in one line, moved aside to
  `WORKDIR/damaged_checkpoints/` (never deleted) and the newest intact step
  is used instead. An intact state of another layout (saved by a library
  version whose training state differs) is refused in one line and left
  where it is.
- `check_config_for_resume` records the config a workdir was started with
  (`WORKDIR/config.json`) and refuses to resume with one that would change
  the run, naming the fields; logging, evaluation and path changes pass.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from inatsounds_jax import registry
from inatsounds_jax import storage
from inatsounds_jax import workdir as workdir_lib


# What orbax says when a saved tree is not the tree asked for.
_LAYOUT_DIFFERS = "tree structures do not match"


class DamagedCheckpointError(RuntimeError):
  """No intact checkpoint could be restored."""


class Preempted(Exception):
  """SIGTERM arrived during training; the state of `step` was saved first."""

  def __init__(self, step: int, workdir: str):
    super().__init__(f"stopped by SIGTERM at step {step}; its state is saved "
                     f"in {workdir}: run the same command again to resume")
    self.step = step


def has_bucket_client() -> bool:
  """Whether the Cloud Storage client (`google-cloud-storage`) is installed."""
  try:
    return importlib.util.find_spec("google.cloud.storage") is not None
  except ModuleNotFoundError:  # Not even the `google.cloud` namespace.
    return False


def check_bucket_client(workdir: str | epath.Path) -> None:
  """Refuses a `gs://` workdir without the Cloud Storage client.

  orbax lists and finalises checkpoint steps in a `gs://` bucket with the
  Cloud Storage client, which it imports only then: without it a run would
  fail after its setup with an ImportError deep in orbax.

  It starts no JAX backend, so a run calls it first, before
  `jax.distributed` is initialised.
  """
  if str(workdir).startswith("gs://") and not has_bucket_client():
    raise registry.ConfigError(
        f"checkpoints in {workdir} need the Cloud Storage client, which is "
        "not installed: pip install 'inatsounds_jax[gcs]' (or "
        "google-cloud-storage)")


class NonFiniteStateError(FloatingPointError):
  """A state about to be saved holds NaN or infinite values."""


@jax.jit
def non_finite_leaves(tree) -> dict:
  """Per top-level field, whether any floating value is NaN or infinite."""
  def bad(subtree):
    flags = [~jnp.isfinite(x).all() for x in jax.tree.leaves(subtree)
             if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.any(jnp.stack(flags)) if flags else jnp.zeros((), bool)
  fields = tree if isinstance(tree, dict) else {
      f.name: getattr(tree, f.name) for f in dataclasses.fields(tree)}
  return {name: bad(value) for name, value in fields.items()}


def describe_non_finite(tree) -> list[str]:
  """Names of the state's fields holding NaN or infinite values."""
  flags = jax.device_get(non_finite_leaves(tree))
  return sorted(name for name, flag in flags.items() if flag)


def state_handler() -> ocp.PyTreeCheckpointHandler:
  """orbax's handler for a TrainState, with replica-parallel saving only off
  CPU.

  Replica-parallel saving has each replica of a replicated array write a
  slice of it: a gain across TPU/GPU hosts, but each slice shape is a
  compiled program, and on CPU (one host's memory) all it adds is compile
  time (BENCHMARKS.md, "Checkpoints"). The files are the same either way.
  """
  scalar = ocp.type_handlers.ScalarHandler()
  handlers = ocp.type_handlers.create_type_handler_registry(
      (int, scalar), (float, scalar), (bytes, scalar), (np.number, scalar),
      (np.ndarray, ocp.type_handlers.NumpyHandler()),
      (jax.Array, ocp.type_handlers.ArrayHandler(
          use_replica_parallel=jax.default_backend() != "cpu")))
  return ocp.PyTreeCheckpointHandler(type_handler_registry=handlers)


class RunCheckpoints:
  """The latest N and the best-by-metric checkpoints of a training run."""

  def __init__(self, workdir: str, keep: int, best_metric: str,
               best_mode: str = "max"):
    """`best_mode`: "max" (accuracies) or "min" (losses) of `best_metric`."""
    if best_mode not in ("max", "min"):
      raise registry.ConfigError(
          f"best_mode must be 'max' or 'min', got {best_mode!r}")
    self.workdir = storage.resolve(workdir)
    check_bucket_client(self.workdir)
    self.best_metric = best_metric
    self.latest = ocp.CheckpointManager(
        self.workdir / workdir_lib.CHECKPOINTS_DIR,
        item_handlers=state_handler(),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=False))
    self.best = ocp.CheckpointManager(
        self.workdir / workdir_lib.BEST_DIR, item_handlers=state_handler(),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True, best_mode=best_mode,
            best_fn=lambda metrics: metrics[best_metric],
            enable_async_checkpointing=False))

  # -- Saving -----------------------------------------------------------------

  def save_latest(self, step: int, state) -> None:
    self._check_finite(step, state)
    if step not in self.latest.all_steps():
      self.latest.save(step, args=ocp.args.PyTreeSave(state))

  def save_best(self, step: int, state, value: float) -> None:
    self._check_finite(step, state)
    self.best.save(step, args=ocp.args.PyTreeSave(state),
                   metrics={self.best_metric: float(value)})

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  @staticmethod
  def _check_finite(step: int, state) -> None:
    bad = describe_non_finite(state)
    if bad:
      raise NonFiniteStateError(
          f"refusing to save step {step}: {', '.join(bad)} hold NaN or "
          "infinite values")

  # -- Restoring --------------------------------------------------------------

  def saved_field(self, field: str):
    """Shapes and dtypes (`jax.ShapeDtypeStruct`s) of one top-level field of
    the newest saved state (best, else latest); None if none holds it."""
    for manager in (self.best, self.latest):
      step = manager.latest_step()
      if step is None:
        continue
      reader = ocp.CheckpointManager(
          manager.directory, item_handlers=ocp.StandardCheckpointHandler())
      metadata = reader.item_metadata(step)
      tree = getattr(metadata, "tree", metadata) or {}
      if tree.get(field) is None:
        return None
      return jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype),
          tree[field], is_leaf=lambda m: hasattr(m, "shape"))
    return None

  def restore_latest(self, abstract, sharding, partial: bool = False):
    """(state, step) of the newest intact latest checkpoint, or None if the
    workdir has none. Damaged newer steps are moved aside with a warning.
    `partial`: `abstract` names some of the saved state's top-level fields
    (e.g. only the model's variables), and only those are read."""
    return self._restore_newest(self.latest, abstract, sharding,
                                partial=partial)

  def restore_best(self, abstract, sharding, partial: bool = False):
    """(state, step) of the best checkpoint, or None."""
    step = self.best.best_step()
    if step is None:
      return None
    return self._restore_newest(self.best, abstract, sharding, [step],
                                partial=partial)

  def _restore_newest(self, manager, abstract, sharding, steps=None,
                      partial: bool = False):
    steps = sorted(manager.all_steps() if steps is None else steps,
                   reverse=True)
    damaged = []
    for step in steps:
      try:
        _check_complete(epath.Path(manager.directory) / str(step))
        state = restore(manager, step, abstract, sharding, partial)
        bad = describe_non_finite(state)
        if bad:
          raise ValueError(f"{', '.join(bad)} hold NaN or infinite values")
      except Exception as e:  # pylint: disable=broad-except
        reason = _one_line(e)
        where = epath.Path(manager.directory) / str(step)
        if _LAYOUT_DIFFERS in str(e):
          # Intact, but of another layout (a library version whose state
          # holds other fields): not damage, so nothing is moved.
          raise registry.ConfigError(
              f"{where}: the state was saved with another layout than this "
              f"run's ({reason}); a library version whose training state "
              "differs (e.g. a loss that keeps other tables) wrote it: "
              "resume it with that version, or start a new --workdir"
          ) from None
        logging.warning("Checkpoint %s is damaged (%s); moved to %s.", where,
                        reason, self._set_aside(manager, step))
        damaged.append(f"step {step}: {reason}")
        continue
      if damaged:
        logging.warning("Resuming from step %d, the newest intact checkpoint "
                        "in %s.", step, manager.directory)
      return state, step
    if damaged:
      raise DamagedCheckpointError(
          f"no intact checkpoint in {manager.directory}: "
          + "; ".join(damaged) + ". Start again with a new --workdir.")
    return None

  def _set_aside(self, manager, step: int) -> epath.Path:
    source = epath.Path(manager.directory) / str(step)
    target = (self.workdir / workdir_lib.DAMAGED_DIR
              / f"{epath.Path(manager.directory).name}_{step}")
    if jax.process_index() == 0:
      target.parent.mkdir(parents=True, exist_ok=True)
      source.rename(target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("set aside damaged checkpoint")
    manager.reload()
    return target


def restore(manager: ocp.CheckpointManager, step: int, abstract, sharding,
            partial: bool = False):
  """The state saved at `step`, laid out with `sharding` (no checks); with
  `partial`, only the fields `abstract` names."""
  target = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract, sharding)
  return manager.restore(step, args=ocp.args.PyTreeRestore(
      target, restore_args=ocp.checkpoint_utils.construct_restore_args(
          target), partial_restore=partial))


# Written by orbax when a step is finished; a step without them may be half
# written (orbax would still restore it from a given target).
_COMPLETION_FILES = ("_CHECKPOINT_METADATA", "default/_METADATA")


def _check_complete(step_dir: epath.Path) -> None:
  missing = [f for f in _COMPLETION_FILES if not (step_dir / f).exists()]
  if missing:
    raise FileNotFoundError(f"missing {', '.join(missing)}")


def _one_line(error: Exception) -> str:
  text = f"{type(error).__name__}: {error}".strip().splitlines()
  line = text[0] if text else type(error).__name__
  return line if len(line) <= 200 else line[:197] + "..."


# -- The recorded config -------------------------------------------------------

# Fields (dotted prefixes) that may change between a run and its resumption:
# they change what is logged, evaluated or where files are, not the updates.
HARMLESS_FIELDS = (
    "log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
    "evals", "best_metric", "eval_batch_size", "data_dir", "manual_dir",
    "init_checkpoint", "distributed", "geo_prior", "geo_threshold",
    "geo_ceiling_prior", "range_model",
)


def _flatten(tree, prefix: str = "") -> dict:
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f"{prefix}{key}."))
    return out
  return {prefix[:-1]: tree}


def _harmless(field: str) -> bool:
  return any(field == h or field.startswith(h + ".") for h in HARMLESS_FIELDS)


def check_config_for_resume(workdir: str, config: ml_collections.ConfigDict,
                            resuming: bool,
                            defaults: ml_collections.ConfigDict | None = None
                            ) -> None:
  """Refuses to resume with a config that changes the run; records it.

  A field the saved config lacks counts as unchanged when its value is the
  one in `defaults`: a later version of the library added it, with a
  default that keeps the old behaviour.

  Raises:
    registry.ConfigError: listing each changed field, old and new value.
  """
  path = workdir_lib.path(workdir, workdir_lib.CONFIG_FILE)
  now = json.loads(config.to_json_best_effort(sort_keys=True))
  if resuming and path.exists():
    was = storage.read_json(path)
    old, new = _flatten(was), _flatten(now)
    default = _flatten(json.loads(defaults.to_json_best_effort())
                       ) if defaults is not None else {}
    added_at_default = {field for field in set(new) - set(old)
                        if field in default and default[field] == new[field]}
    changed = [f"  {field}: {old.get(field, '(unset)')!r} -> "
               f"{new.get(field, '(unset)')!r}"
               for field in sorted(set(old) | set(new))
               if old.get(field) != new.get(field) and not _harmless(field)
               and field not in added_at_default]
    if changed:
      raise registry.ConfigError(
          f"{workdir} holds a run started with another config; these "
          "changes would alter it:\n" + "\n".join(changed[:12]) +
          ("\n  ..." if len(changed) > 12 else "") +
          "\nUse a new --workdir, or the old values to resume.")
  if jax.process_index() == 0:
    storage.write_json(path, now, sort_keys=True)
