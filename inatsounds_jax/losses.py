"""Training losses by name, with their hyperparameters and state.

A loss is a `Loss`: `init(num_classes)` gives its state (a pytree; empty for
stateless losses) and `__call__(logits, targets, batch, state)` returns
`(loss, new_state)`. The training loop carries the state in its train state
and checkpoints it. `multilabel` says whether the head is read through
sigmoids (and so starts with the base-rate bias log(1/C)) or a softmax.
`from_config` binds a registered loss to `config.loss_options` (unknown
options are refused, naming the known ones) and to the run (`LossContext`),
and adds asset regularisation when `config.asset_reg.weight > 0`.

`targets` are soft targets `[batch, classes]`: the observed labels (one-hot,
or more entries in mode `full`, see `label_modes.py`), mixed by mixup.
`batch["label_mask"]` `[batch, classes]` (1 = known) says which entries are
known; without it only the positives are. Known negatives (from a range or
checklist prior) keep full weight in every loss. `batch["step"]` is the
update's step, `batch["example_index"]` the row of per-example state.

The single-positive family follows the Merlin L48 study ("Merlin L48
Spectrogram Dataset", NeurIPS 2025, arXiv:2511.00252, s.4 and its code),
which takes them from Cole et al. 2021 ("Multi-Label Learning from Single
Positive Labels": AN, AN-LS, WAN, EPR, ROLE) and Kim et al. 2022 ("Large
Loss Matters in Weakly Supervised Multi-Label Classification": LL-R, LL-Ct,
LL-Cp), with p = sigmoid(logits), BCE(z, t) = -(t log p + (1-t) log(1-p)),
every loss averaged over batch x classes:

- `an`: BCE against the targets, unknown entries taken as negatives.
- `an_ls`: `an` with the unknown entries' targets smoothed, t (1 - e) +
  e / 2 (0.05 for e = 0.1, the L48 code's form; Cole et al. used 0.1);
  known entries (the positives, and the negatives a geo or checklist
  prior makes known) stay hard, so LS reads the prior's mask. Both
  published codes smooth the positive too (L48 0.95, Cole et al. 0.9), and
  the L48 code's LS never reads the mask (its known-negative options
  `neg_prior_a` 1, `neg_prior_b` 0 leave them smoothed): there the priors
  change LS only through the clips they keep (negative-only rows).
- `wan`: `an` with unknown entries weighted 1 / (C - 1).
- `em`: BCE on known entries; `a (p log p + (1-p) log(1-p))` (minus the
  entropy, so minimising raises it) on unknown ones, a = 0.1.
- `epr`: BCE on known entries plus (sum p / B - k)^2 / C^2, k the expected
  positives per example (`expected_positives`; 0 takes the dataset's mean
  number of audible species per recording from its strong labels: an
  upper estimate for a window, which hears some of them).
- `role`: Cole et al.'s s.4 (their code: `losses.loss_role`, the label
  estimator in `models.py`, its optimizer in `train.py`). A label table G
  `[examples, classes]` of logits in the state, initialised uniform in
  (logit 0.4, logit 0.6); the estimate q reads known entries as their
  labels and unknown ones as sigmoid(G). Loss 0.5 (R(f | q) + R(q | f)),
  R(F | Y) = known-entry BCE of F (EPR's term: the positive, and prior
  negatives) + BCE(F, Y) over every entry, Y held fixed + the EPR
  penalty on F. q's known-entry term is zero (known entries are labels,
  not estimates) and its cross term counts unknown entries only. The model
  learns from R(f | q); G trains with Adam (torch's defaults: betas 0.9 /
  0.999, eps 1e-8) on 0.5 R(q | f) at `label_learning_rate_multiplier`
  (10, Cole et al.'s `lr_mult`) x the run's learning rate at the step, and,
  like torch's Adam on one parameter, densely: every row moves each step
  by its moments, not only the batch's rows. Where the published code
  differs: Cole et al.'s table starts observed positives at 0.995 (and
  negatives at 0.005) and trains them with its positive term; the L48
  code pins no negatives and scales the EPR penalty by a further 1 / (B C)
  (a bug, not copied). The table and its Adam moments are three
  `[examples, classes]` float32 arrays, split by row over the devices and
  all rewritten every step: for the iNatSounds train split (137,012
  recordings x 5,569 classes) about 9 GB, which only a device mesh with
  that much memory between its devices can hold.
- `ll_r`, `ll_ct`, `ll_cp`: the largest BCE(z, 0) losses among the
  batch's unknown entries, ceil(r x B x C) of them (Kim et al.'s count, in
  their code and the L48 code: a fraction of batch x classes, not of the
  unknown entries; ties to the lower batch-major index), are rejected
  (loss 0), corrected for this step (loss against 1), or corrected for
  good (a per-example table marks them known positives). In epoch t
  (from 1: `batch["step"]` // the run's steps per epoch + 1) r = delta
  (t - 1) for LL-R and LL-Ct, and r = delta from epoch 2 for LL-Cp (Kim
  et al.'s schedule: their `clean_rate` falls by `delta_rel` after each
  epoch; the L48 code never advances its epoch counter, and its LL-Cp
  flips a raw 20 % from epoch 1).
- `full_bce`: BCE on known entries only (the upper bound with
  `label_mode = "full"`, where every entry is known).

`softmax_ce` and `assume_negative_bce` (sigmoid BCE summed over classes,
averaged over examples: `an` times C, the iNatSounds paper's "assume
negative") are the iNatSounds paper's (Chasmai et al. 2025) objectives.

For the long tail (the paper's open question, s.6): `logit_adjusted_ce`,
softmax cross-entropy on logits + tau log(prior) (Menon et al. 2021,
"Long-tail learning via logit adjustment", the logit-adjusted loss; the
prior is the train split's label frequencies, a label without a training
example counted as half of one), so the plain logits used at test time
are the balanced ones; `balanced_softmax` is the same with tau = 1, which
is Ren et al. 2020's Balanced Softmax (exp(z_j) n_j / sum_i exp(z_i) n_i).

Per-example tables (ROLE, LL-Cp, asset regularisation) live under the key
`"rows"` of the state: `state_specs` shards them over the mesh's `data` axis
(rows padded to a multiple of `ROW_MULTIPLE`), and rows are read and
written inside `shard_map`, so no device ever holds the whole table.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from inatsounds_jax import registry

P = jax.sharding.PartitionSpec
# Per-example tables have a multiple of this many rows, so that any mesh
# of up to this many devices (or a divisor) splits them evenly.
ROW_MULTIPLE = 64


@dataclasses.dataclass(frozen=True)
class LossContext:
  """What a loss needs to know about the run.

  Attributes:
    num_examples: rows of per-example state (the train split's
      `example_index` range).
    steps_per_epoch: for epoch-dependent schedules.
    mesh: the training mesh; per-example rows are sharded over its `data`
      axis (None: one device, plain indexing).
    expected_positives: mean audible species per example from the data
      (0 when unknown).
    num_assets: rows of per-recording state when several examples share a
      recording (L48's clips of an asset: `asset_index`); 0 when each
      example is its own recording.
    class_counts: training examples per label (empty when unknown).
    learning_rate: the run's learning-rate schedule (step -> rate), for a
      table trained beside the model (ROLE); None outside a run.
  """
  num_examples: int = 0
  steps_per_epoch: int = 1
  mesh: jax.sharding.Mesh | None = None
  expected_positives: float = 0.0
  num_assets: int = 0
  class_counts: tuple[float, ...] = ()
  learning_rate: Callable[[jax.Array], jax.Array] | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class Loss:
  """A loss with optional state; `multilabel` for sigmoid heads.

  `options` are the hyperparameters it is bound with, `bind(options,
  context)` gives the same loss with others (None: it has none).
  """
  fn: Callable[..., tuple[jax.Array, Any]]
  multilabel: bool
  init: Callable[[int], Any] = lambda num_classes: ()
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  bind: Callable[[Mapping[str, Any], LossContext], "Loss"] | None = None

  def __call__(self, logits, targets, batch, state):
    return self.fn(logits, targets, batch, state)


LOSSES: registry.Registry[Loss] = registry.Registry("loss")


# ---------------------------------------------------------------------------
# Pieces shared by the family.
# ---------------------------------------------------------------------------

def label_mask(targets: jax.Array, batch: Mapping) -> jax.Array:
  """`batch["label_mask"]`, or (without one) the positives."""
  mask = batch.get("label_mask")
  return (targets > 0).astype(targets.dtype) if mask is None else mask.astype(
      targets.dtype)


def _bce(logits, targets):
  return optax.sigmoid_binary_cross_entropy(logits, targets)


def expected_positive_penalty(probabilities: jax.Array, k: float
                              ) -> jax.Array:
  """(sum of p over batch and classes / B - k)^2 / C^2 (Cole et al. s.4)."""
  batch, classes = probabilities.shape
  return (probabilities.sum() / batch - k) ** 2 / classes ** 2


def _epoch(batch: Mapping, context: LossContext) -> jax.Array:
  """The update's epoch, counted from 1."""
  return batch["step"] // max(context.steps_per_epoch, 1) + 1


def padded_rows(num_examples: int) -> int:
  return max(ROW_MULTIPLE, -(-num_examples // ROW_MULTIPLE) * ROW_MULTIPLE)


def state_specs(loss_state) -> Any:
  """PartitionSpecs for a loss state: tables under `"rows"` split over
  `data` by row, everything else replicated."""
  def spec(path, leaf):
    del leaf
    rows = any(getattr(k, "key", None) == "rows" for k in path)
    return P("data") if rows else P()
  return jax.tree_util.tree_map_with_path(spec, loss_state)


def _local_rows(table, index):
  """This device's rows among `index` (zeros elsewhere) and their mask."""
  n = table.shape[0]
  local = index - jax.lax.axis_index("data") * n
  inside = (local >= 0) & (local < n)
  rows = table[jnp.clip(local, 0, n - 1)]
  return jnp.where(inside.reshape((-1,) + (1,) * (rows.ndim - 1)), rows,
                   jnp.zeros_like(rows)), local, inside


def gather_rows(table: jax.Array, index: jax.Array,
                mesh: jax.sharding.Mesh | None) -> jax.Array:
  """`table[index]` with `table` split by row over `mesh`'s `data` axis.

  Each device looks up the batch's indices among its own rows; a sum over
  devices assembles them, scattered back by batch position. The table is
  never gathered.
  """
  if mesh is None:
    return table[index]

  def local(tab, idx):
    everyone = jax.lax.all_gather(idx, "data", tiled=True)
    rows, _, _ = _local_rows(tab, everyone)
    return jax.lax.psum_scatter(rows, "data", scatter_dimension=0,
                                tiled=True)

  return jax.shard_map(local, mesh=mesh, in_specs=(P("data"), P("data")),
                       out_specs=P("data"))(table, index)


def set_rows(table: jax.Array, index: jax.Array, values: jax.Array,
             mesh: jax.sharding.Mesh | None) -> jax.Array:
  """`table.at[index].set(values)`, each device writing only its rows.

  An index repeated in a batch keeps one of its values.
  """
  if mesh is None:
    return table.at[index].set(values.astype(table.dtype))

  def local(tab, idx, vals):
    everyone = jax.lax.all_gather(idx, "data", tiled=True)
    new = jax.lax.all_gather(vals, "data", tiled=True)
    _, rows, inside = _local_rows(tab, everyone)
    target = jnp.where(inside, rows, tab.shape[0])  # Out of range: dropped.
    return tab.at[target].set(new.astype(tab.dtype), mode="drop")

  return jax.shard_map(local, mesh=mesh,
                       in_specs=(P("data"), P("data"), P("data")),
                       out_specs=P("data"))(table, index, values)


def _logit(p: float) -> float:
  return math.log(p / (1 - p))


# ---------------------------------------------------------------------------
# The losses.
# ---------------------------------------------------------------------------

def _softmax_cross_entropy(logits, targets, batch, state):
  del batch
  return optax.softmax_cross_entropy(logits, targets).mean(), state


def _logit_adjusted_ce(logits, targets, batch, state, *, options, context):
  """Softmax CE on logits + tau log(prior) (module docstring)."""
  del batch
  counts = jnp.maximum(jnp.asarray(context.class_counts, jnp.float32), 0.5)
  adjustment = options["tau"] * jnp.log(counts / counts.sum())
  return optax.softmax_cross_entropy(logits + adjustment,
                                     targets).mean(), state


def _assume_negative_bce(logits, targets, batch, state):
  """Sigmoid BCE against the (soft) label, summed over classes."""
  del batch
  return _bce(logits, targets).sum(-1).mean(), state


def _an(logits, targets, batch, state, *, options, context):
  del batch, options, context
  return _bce(logits, targets).mean(), state


def _an_ls(logits, targets, batch, state, *, options, context):
  del context
  e = options["smoothing"]
  known = label_mask(targets, batch)
  smoothed = known * targets + (1 - known) * (targets * (1 - e) + e / 2)
  return _bce(logits, smoothed).mean(), state


def _wan(logits, targets, batch, state, *, options, context):
  del options, context
  mask = label_mask(targets, batch)
  weight = mask + (1 - mask) / (logits.shape[-1] - 1)
  return (weight * _bce(logits, targets)).mean(), state


def _em(logits, targets, batch, state, *, options, context):
  del context
  mask = label_mask(targets, batch)
  p = jax.nn.sigmoid(logits)
  neg_entropy = (p * jax.nn.log_sigmoid(logits) +
                 (1 - p) * jax.nn.log_sigmoid(-logits))
  per_entry = (mask * _bce(logits, targets) +
               (1 - mask) * options["alpha"] * neg_entropy)
  return per_entry.mean(), state


def _k(options, context) -> float:
  return options["expected_positives"] or context.expected_positives


def _epr(logits, targets, batch, state, *, options, context):
  mask = label_mask(targets, batch)
  known = (mask * _bce(logits, targets)).mean()
  return known + expected_positive_penalty(
      jax.nn.sigmoid(logits), _k(options, context)), state


def _full_bce(logits, targets, batch, state, *, options, context):
  del options, context
  return (label_mask(targets, batch) * _bce(logits, targets)).mean(), state


def _role_init(num_classes, *, options, context):
  del options
  # Uniform in logits, as both published codes draw it, from a fixed key
  # (the state must not depend on anything but the run's shape).
  table = jax.random.uniform(
      jax.random.PRNGKey(0), (padded_rows(context.num_examples), num_classes),
      minval=_logit(0.4), maxval=_logit(0.6))
  adam = optax.scale_by_adam().init(table)
  return {"rows": {"label_logits": table, "adam_mu": adam.mu,
                   "adam_nu": adam.nu},
          "adam_count": adam.count}


def _role(logits, targets, batch, state, *, options, context):
  if context.learning_rate is None:
    raise ValueError("loss 'role' trains its label table at a multiple of "
                     "the run's learning rate: LossContext.learning_rate "
                     "must be the run's schedule")
  mask = label_mask(targets, batch)
  index = batch["example_index"]
  k = _k(options, context)
  rows = state["rows"]
  p = jax.nn.sigmoid(logits)

  def r_labels(table):
    """0.5 R(q | f), the table's half, and q."""
    g = gather_rows(table, index, context.mesh)
    q = mask * targets + (1 - mask) * jax.nn.sigmoid(g)
    cross = ((1 - mask) * _bce(g, jax.lax.stop_gradient(p))).mean()
    return 0.5 * (cross + expected_positive_penalty(q, k)), q

  (half_table, q), grad = jax.value_and_grad(r_labels, has_aux=True)(
      rows["label_logits"])
  r_model = ((mask * _bce(logits, targets)).mean() +
             _bce(logits, jax.lax.stop_gradient(q)).mean() +
             expected_positive_penalty(p, k))
  steps, adam = optax.scale_by_adam().update(grad, optax.ScaleByAdamState(
      state["adam_count"], rows["adam_mu"], rows["adam_nu"]))
  rate = (options["label_learning_rate_multiplier"] *
          context.learning_rate(batch["step"]))
  value = 0.5 * r_model + jax.lax.stop_gradient(half_table)
  return value, {"rows": {"label_logits": rows["label_logits"] - rate * steps,
                          "adam_mu": adam.mu, "adam_nu": adam.nu},
                 "adam_count": adam.count}


def large_loss_selection(losses: jax.Array, unknown: jax.Array,
                         fraction: jax.Array) -> jax.Array:
  """bool `[batch, classes]`: the ceil(fraction x batch x classes) largest
  losses among unknown entries (all of them if fewer); ties go to the
  lower batch-major index."""
  flat = jnp.where(unknown, losses, -jnp.inf).reshape(-1)
  # Less a hair: float32 rounding of r must not add an entry where
  # r x B x C is a whole number.
  count = jnp.ceil(fraction * flat.size * (1 - 1e-6)).astype(jnp.int32)
  order = jnp.argsort(-flat, stable=True)
  rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.size))
  return ((rank < count) & unknown.reshape(-1)).reshape(losses.shape)


def _ll_rate(batch, options, context, permanent: bool) -> jax.Array:
  epoch = _epoch(batch, context)
  if permanent:
    return jnp.where(epoch >= 2, options["delta"], 0.0)
  return options["delta"] * (epoch - 1)


def _ll(logits, targets, batch, state, *, options, context, correct: bool):
  """LL-R (`correct=False`) and LL-Ct (`correct=True`)."""
  mask = label_mask(targets, batch)
  per_entry = _bce(logits, targets)
  chosen = large_loss_selection(
      jax.lax.stop_gradient(per_entry), mask == 0,
      _ll_rate(batch, options, context, permanent=False))
  replaced = _bce(logits, jnp.ones_like(targets)) if correct else 0.0
  return jnp.where(chosen, replaced, per_entry).mean(), state


def _ll_cp_init(num_classes, *, options, context):
  del options
  return {"rows": {"corrected": jnp.zeros(
      (padded_rows(context.num_examples), num_classes), jnp.int8)}}


def _ll_cp(logits, targets, batch, state, *, options, context):
  index = batch["example_index"]
  table = state["rows"]["corrected"]
  corrected = gather_rows(table, index, context.mesh).astype(targets.dtype)
  mask = jnp.maximum(label_mask(targets, batch), corrected)
  targets = jnp.maximum(targets, corrected)
  per_entry = _bce(logits, targets)
  chosen = large_loss_selection(
      jax.lax.stop_gradient(per_entry), mask == 0,
      _ll_rate(batch, options, context, permanent=True))
  value = jnp.where(chosen, _bce(logits, jnp.ones_like(targets)),
                    per_entry).mean()
  new = set_rows(table, index, jnp.maximum(corrected, chosen), context.mesh)
  return value, {"rows": {"corrected": new}}


# ---------------------------------------------------------------------------
# Registration.
# ---------------------------------------------------------------------------

def _bound(fn, init, options, context, multilabel=True):
  return Loss(
      functools.partial(fn, options=dict(options), context=context),
      multilabel=multilabel,
      init=(functools.partial(init, options=dict(options), context=context)
            if init else (lambda num_classes: ())),
      options=dict(options),
      bind=lambda o, c: _bound(fn, init, o, c, multilabel))


def _add_family(name: str, fn, init=None, multilabel=True,
                **defaults) -> None:
  LOSSES.add(name, _bound(fn, init, defaults, LossContext(), multilabel))


LOSSES.add("softmax_ce", Loss(_softmax_cross_entropy, multilabel=False))
LOSSES.add("assume_negative_bce", Loss(_assume_negative_bce, multilabel=True))
_add_family("an", _an)
_add_family("an_ls", _an_ls, smoothing=0.1)
_add_family("wan", _wan)
_add_family("em", _em, alpha=0.1)
_add_family("epr", _epr, expected_positives=0.0)
_add_family("role", _role, _role_init, expected_positives=0.0,
            label_learning_rate_multiplier=10.0)
# delta: the middle of Kim et al.'s grid (0.1-0.5 % per epoch).
_add_family("ll_r", functools.partial(_ll, correct=False), delta=0.002)
_add_family("ll_ct", functools.partial(_ll, correct=True), delta=0.002)
_add_family("ll_cp", _ll_cp, _ll_cp_init, delta=0.002)
_add_family("full_bce", _full_bce)
_add_family("logit_adjusted_ce", _logit_adjusted_ce, multilabel=False,
            tau=1.0)
_add_family("balanced_softmax", _logit_adjusted_ce, multilabel=False,
            tau=1.0)


# ---------------------------------------------------------------------------
# Asset regularisation and construction from a config.
# ---------------------------------------------------------------------------

def with_asset_regularisation(loss: Loss, weight: float, rate: float,
                              context: LossContext) -> Loss:
  """`loss` plus `weight` x BCE(logits, a[recording]) (Merlin L48 study,
  s.4, "asset regularisation").

  a `[recordings, classes]` is a running average of each recording's window
  probabilities (initialised uniform in (0.4, 0.6); known positives read
  as 1, everything else, known negatives included, as the average: the
  study pins the positives only, so the term is not a no-op under full
  labels), updated a <- (1 - rate) a + rate p after each use. Rows by
  `batch["asset_index"]` where examples share recordings (L48's clips,
  `context.num_assets` rows), else by `batch["example_index"]` (one
  recording per example in iNatSounds).
  """
  def init(num_classes):
    rows = context.num_assets or context.num_examples
    table = jax.random.uniform(jax.random.PRNGKey(1),
                               (padded_rows(rows), num_classes),
                               minval=0.4, maxval=0.6)
    return {"loss": loss.init(num_classes), "rows": {"asset": table}}

  def fn(logits, targets, batch, state):
    value, inner = loss(logits, targets, batch, state["loss"])
    positive = label_mask(targets, batch) * (targets > 0)
    index = batch["asset_index" if context.num_assets else "example_index"]
    average = gather_rows(state["rows"]["asset"], index, context.mesh)
    average = positive * targets + (1 - positive) * average
    value = value + weight * _bce(logits, average).mean()
    updated = ((1 - rate) * average +
               rate * jax.nn.sigmoid(jax.lax.stop_gradient(logits)))
    return value, {"loss": inner, "rows": {"asset": set_rows(
        state["rows"]["asset"], index, updated, context.mesh)}}

  return Loss(fn, multilabel=True, init=init, options=loss.options)


def uses_rows(loss: Loss, num_classes: int = 1) -> bool:
  """Whether the loss keeps per-example rows (needs `example_index`)."""
  shapes = jax.eval_shape(lambda: loss.init(num_classes))
  return any(getattr(k, "key", None) == "rows"
             for path, _ in jax.tree_util.tree_flatten_with_path(shapes)[0]
             for k in path)


def from_config(config, context: LossContext) -> Loss:
  """`config.loss` bound to `config.loss_options` and the run.

  Raises:
    registry.ConfigError: unknown loss, unknown option (the known ones are
      listed), or an option the data must supply and does not.
  """
  loss = LOSSES.get(config.loss)
  given = dict(config.get("loss_options", {}) or {})
  unknown = sorted(set(given) - set(loss.options))
  if unknown:
    raise registry.ConfigError(
        f"loss_options {unknown} are not options of loss {config.loss!r}; "
        f"it has {sorted(loss.options) or 'none'}")
  if loss.bind is not None:
    options = {**loss.options, **given}
    if "expected_positives" in options and not _k(options, context):
      raise registry.ConfigError(
          f"loss {config.loss!r} needs the expected number of positives per "
          "example: set loss_options.expected_positives, or use a dataset "
          "with strong labels (the synthetic corpus), which gives its mean")
    if "tau" in options and not context.class_counts:
      raise registry.ConfigError(
          f"loss {config.loss!r} needs the train split's label counts "
          "(label_counts.json beside the records, which builds since "
          "then write): build the dataset again")
    loss = loss.bind(options, context)
  asset = dict(config.get("asset_reg", {}) or {})
  if asset.get("weight"):
    if not loss.multilabel:
      raise registry.ConfigError(
          f"asset_reg needs a multilabel loss; {config.loss!r} is softmax")
    loss = with_asset_regularisation(loss, float(asset["weight"]),
                                     float(asset.get("rate", 0.001)),
                                     context)
  return loss


def check_rows_fit(loss: Loss, num_classes: int, num_devices: int) -> None:
  """Per-example tables must split evenly over the devices."""
  if uses_rows(loss, num_classes) and ROW_MULTIPLE % num_devices:
    raise registry.ConfigError(
        f"per-example loss state is split over the devices in blocks of "
        f"{ROW_MULTIPLE} rows; {num_devices} devices do not divide it")

