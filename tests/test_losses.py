"""The single-positive loss family against numpy, entry by entry."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from inatsounds_jax import data
from inatsounds_jax import losses
from inatsounds_jax import registry
from inatsounds_jax import train

# Two examples, four classes. Example 0: positive class 1, class 3 a known
# negative (from a prior). Example 1: positive class 0, nothing else known.
LOGITS = np.array([[0.5, 2.0, -1.0, 1.5], [1.0, -0.5, 0.3, -2.0]], np.float32)
TARGETS = np.array([[0, 1, 0, 0], [1, 0, 0, 0]], np.float32)
MASK = np.array([[0, 1, 0, 1], [1, 0, 0, 0]], np.float32)
BATCH = {"label_mask": jnp.asarray(MASK), "step": jnp.asarray(0),
         "example_index": jnp.asarray([3, 1])}


def np_bce(z, t):
  p = 1 / (1 + np.exp(-np.asarray(z, np.float64)))
  return -(t * np.log(p) + (1 - t) * np.log(1 - p))


def sigmoid(z):
  return 1 / (1 + np.exp(-np.asarray(z, np.float64)))


def bound(name, context=None, **options):
  loss = losses.LOSSES.get(name)
  return loss.bind({**loss.options, **options},
                   context or losses.LossContext())


def value_of(loss, batch=None, state=None, logits=LOGITS, targets=TARGETS):
  state = loss.init(logits.shape[1]) if state is None else state
  value, new = loss(jnp.asarray(logits), jnp.asarray(targets),
                    BATCH if batch is None else batch, state)
  return float(value), new


def test_an_takes_unknowns_as_negatives_averaged_over_batch_and_classes():
  value, _ = value_of(losses.LOSSES.get("an"))
  assert value == pytest.approx(np_bce(LOGITS, TARGETS).mean(), rel=1e-5)


def test_assume_negative_bce_is_an_summed_over_classes():
  an, _ = value_of(losses.LOSSES.get("an"))
  summed, _ = value_of(losses.LOSSES.get("assume_negative_bce"))
  assert summed == pytest.approx(4 * an, rel=1e-5)


def test_an_ls_smooths_unknown_entries_and_keeps_known_ones_hard():
  value, _ = value_of(losses.LOSSES.get("an_ls"))
  # Known: the positives and example 0's class 3 (a prior's negative).
  smoothed = np.where(MASK == 1, TARGETS, 0.05)
  assert smoothed[0, 3] == 0.0 and smoothed[0, 1] == 1.0
  assert value == pytest.approx(np_bce(LOGITS, smoothed).mean(), rel=1e-5)


def test_wan_weights_unknown_entries_one_over_classes_minus_one():
  value, _ = value_of(losses.LOSSES.get("wan"))
  weight = np.where(MASK == 1, 1.0, 1 / 3)
  assert value == pytest.approx((weight * np_bce(LOGITS, TARGETS)).mean(),
                                rel=1e-5)


def test_em_is_bce_on_known_and_scaled_negative_entropy_on_unknown():
  value, _ = value_of(losses.LOSSES.get("em"))
  expected = np.zeros_like(LOGITS, np.float64)
  for b in range(2):
    for c in range(4):
      p = sigmoid(LOGITS[b, c])
      if MASK[b, c]:
        expected[b, c] = np_bce(LOGITS[b, c], TARGETS[b, c])
      else:
        expected[b, c] = 0.1 * (p * np.log(p) + (1 - p) * np.log(1 - p))
  assert value == pytest.approx(expected.mean(), rel=1e-5)


def test_epr_adds_the_expected_positive_penalty_with_the_given_k():
  value, _ = value_of(bound("epr", expected_positives=1.5))
  known = (MASK * np_bce(LOGITS, TARGETS)).mean()
  penalty = (sigmoid(LOGITS).sum() / 2 - 1.5) ** 2 / 16
  assert value == pytest.approx(known + penalty, rel=1e-5)


def test_epr_takes_k_from_the_data_when_not_given():
  a, _ = value_of(bound("epr", losses.LossContext(expected_positives=2.0)))
  b, _ = value_of(bound("epr", expected_positives=2.0))
  assert a == pytest.approx(b)


def test_full_bce_counts_known_entries_only():
  value, _ = value_of(losses.LOSSES.get("full_bce"))
  assert value == pytest.approx((MASK * np_bce(LOGITS, TARGETS)).mean(),
                                rel=1e-5)


def test_large_loss_selection_breaks_ties_by_lower_index():
  loss_values = jnp.array([[1.0, 3.0, 3.0], [3.0, 0.5, 2.0]])
  unknown = jnp.array([[True, True, True], [True, False, True]])
  # 6 entries x 0.3 = 1.8 -> 2 chosen; three tie at 3.0: the first two win.
  chosen = losses.large_loss_selection(loss_values, unknown, 0.3)
  np.testing.assert_array_equal(chosen, [[False, True, True],
                                         [False, False, False]])
  # A known entry is never chosen, however large.
  chosen = losses.large_loss_selection(jnp.array([[9.0, 1.0]]),
                                       jnp.array([[False, True]]), 1.0)
  np.testing.assert_array_equal(chosen, [[False, True]])


def test_large_loss_count_is_kims_ceil_of_batch_times_classes():
  loss_values = jnp.arange(8.0).reshape(2, 4)
  unknown = jnp.array([[True, True, False, False], [True, True, True, True]])
  assert not losses.large_loss_selection(loss_values, unknown, 0.0).any()
  # 0.1 x 8 = 0.8 -> 1 (Kim et al.'s ceil).
  np.testing.assert_array_equal(
      losses.large_loss_selection(loss_values, unknown, 0.1),
      [[False, False, False, False], [False, False, False, True]])
  # 0.3 x 8 = 2.4 -> the 3 largest unknown losses. Over the 6 unknown
  # entries it would be ceil(1.8) = 2.
  np.testing.assert_array_equal(
      losses.large_loss_selection(loss_values, unknown, 0.3),
      [[False, False, False, False], [False, True, True, True]])
  # delta 0.002 in epoch 6 of batch 16 x 100 classes: 16 entries, though
  # float32's 0.002 x 5 x 1600 is 16.000002.
  chosen = losses.large_loss_selection(
      jnp.zeros((16, 100)), jnp.ones((16, 100), bool),
      jnp.float32(0.002) * jnp.float32(5))
  assert int(chosen.sum()) == 16


def ll_expected(rate, correct):
  per_entry = np_bce(LOGITS, TARGETS)
  unknown = np.argwhere(MASK == 0)
  count = int(np.ceil(rate * MASK.size - 1e-9))
  ranked = sorted(unknown.tolist(), key=lambda bc: -per_entry[tuple(bc)])
  out = per_entry.copy()
  for b, c in ranked[:count]:
    out[b, c] = np_bce(LOGITS[b, c], 1.0) if correct else 0.0
  return out.mean()


@pytest.mark.parametrize("name,correct", [("ll_r", False), ("ll_ct", True)])
def test_ll_r_and_ll_ct_follow_the_epoch_schedule(name, correct):
  loss = bound(name, losses.LossContext(steps_per_epoch=10), delta=0.1)
  # Epoch 1 (steps 0-9): unmodified, i.e. AN.
  value, _ = value_of(loss, dict(BATCH, step=jnp.asarray(9)))
  assert value == pytest.approx(ll_expected(0.0, correct), rel=1e-5)
  # Epoch 2 from step 10: r = 0.1 of the 8 entries -> 1, the largest
  # unknown BCE(z, 0) (example 0's class 0, logit 0.5).
  value, _ = value_of(loss, dict(BATCH, step=jnp.asarray(10)))
  per_entry = np_bce(LOGITS, TARGETS)
  per_entry[0, 0] = np_bce(LOGITS[0, 0], 1.0) if correct else 0.0
  assert value == pytest.approx(per_entry.mean(), rel=1e-5)
  # Epoch 3: r = 0.1 x 2 = 0.2 of the 8 entries -> ceil(1.6) = 2.
  value, _ = value_of(loss, dict(BATCH, step=jnp.asarray(25)))
  assert value == pytest.approx(ll_expected(0.2, correct), rel=1e-5)
  assert value != pytest.approx(ll_expected(0.1, correct), rel=1e-5)


def test_ll_cp_corrects_permanently_from_epoch_two():
  context = losses.LossContext(num_examples=5, steps_per_epoch=10)
  loss = bound("ll_cp", context, delta=0.1)
  state = loss.init(4)
  value, state = value_of(loss, dict(BATCH, step=jnp.asarray(3)), state)
  assert value == pytest.approx(ll_expected(0.0, True), rel=1e-5)
  assert not np.asarray(state["rows"]["corrected"]).any()
  # Epoch 2: ceil(0.1 x 8) = 1 entry, the largest unknown BCE(z, 0):
  # example 0's class 0 (logit 0.5, above 0.3, -0.5, -1.0 and -2.0).
  value, state = value_of(loss, dict(BATCH, step=jnp.asarray(10)), state)
  assert value == pytest.approx(ll_expected(0.1, True), rel=1e-5)
  table = np.asarray(state["rows"]["corrected"])
  assert table.sum() == 1 and table[3, 0] == 1  # Example 0 is row 3.
  # Next time the entry is a known positive: its loss is BCE against 1.
  value, _ = value_of(loss, dict(BATCH, step=jnp.asarray(0)), state)
  targets = TARGETS.copy()
  targets[0, 0] = 1
  assert value == pytest.approx(np_bce(LOGITS, targets).mean(), rel=1e-5)


def role_context(**fields):
  # Learning rate 1e-3 x the multiplier 10: the table's Adam rate 0.01.
  return losses.LossContext(learning_rate=lambda step: 1e-3, **fields)


def test_role_loss_and_one_adam_step_on_the_label_table_match_numpy():
  loss = bound("role", role_context(num_examples=5), expected_positives=1.0)
  state = loss.init(4)
  g = np.asarray(state["rows"]["label_logits"], np.float64)
  assert g.shape == (losses.ROW_MULTIPLE, 4)
  assert ((sigmoid(g) > 0.4 - 1e-6) & (sigmoid(g) < 0.6 + 1e-6)).all()
  value, new = value_of(loss, state=state)
  rows = g[[3, 1]]
  s = sigmoid(rows)
  q = MASK * TARGETS + (1 - MASK) * s  # Known entries read as labels.
  p = sigmoid(LOGITS)

  def penalty(x):
    return (x.sum() / 2 - 1.0) ** 2 / 16

  # R(f | q): known-entry BCE + BCE against q everywhere + the penalty;
  # R(q | f): BCE of the unknown entries against p + the penalty on q.
  r_model = ((MASK * np_bce(LOGITS, TARGETS)).mean() +
             np_bce(LOGITS, q).mean() + penalty(p))
  r_table = ((1 - MASK) * np_bce(rows, p)).mean() + penalty(q)
  assert value == pytest.approx(0.5 * (r_model + r_table), rel=1e-5)
  # d (0.5 r_table) / d g: zero at known entries.
  grad = 0.5 * (1 - MASK) * ((s - p) / 8 +
                             2 * (q.sum() / 2 - 1.0) / 2 / 16 * s * (1 - s))
  # Adam's first step (torch defaults): m = 0.1 grad, v = 0.001 grad^2;
  # bias-corrected, grad / (|grad| + 1e-8): 0.01 x the sign.
  expected = g.copy()
  expected[[3, 1]] = rows - 0.01 * grad / (np.abs(grad) + 1e-8)
  np.testing.assert_allclose(np.asarray(new["rows"]["label_logits"]),
                             expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(new["rows"]["adam_mu"])[[3, 1]],
                             0.1 * grad, rtol=1e-4, atol=1e-12)
  np.testing.assert_allclose(np.asarray(new["rows"]["adam_nu"])[[3, 1]],
                             0.001 * grad ** 2, rtol=1e-4, atol=1e-16)
  assert int(new["adam_count"]) == 1
  # Step 2 on other rows: row 3's moments still move it (dense Adam, as
  # torch's on one parameter), by 0.01 m_hat / (sqrt(v_hat) + 1e-8).
  _, after = value_of(loss, dict(BATCH, example_index=jnp.asarray([0, 2])),
                      new)
  m, v = 0.9 * 0.1 * grad[0], 0.999 * 0.001 * grad[0] ** 2
  m_hat, v_hat = m / (1 - 0.9 ** 2), v / (1 - 0.999 ** 2)
  np.testing.assert_allclose(
      np.asarray(after["rows"]["label_logits"])[3],
      expected[3] - 0.01 * m_hat / (np.sqrt(v_hat) + 1e-8), rtol=1e-5,
      atol=1e-6)


def test_role_needs_the_runs_learning_rate():
  loss = bound("role", losses.LossContext(num_examples=5),
               expected_positives=1.0)
  with pytest.raises(ValueError, match="learning rate"):
    value_of(loss)


def test_role_table_sharded_over_eight_devices_matches_one_device():
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("data",))
  logits = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
  targets = np.eye(4, dtype=np.float32)[np.arange(8) % 4]
  batch = {"label_mask": jnp.asarray(targets), "step": jnp.asarray(0),
           "example_index": jnp.asarray([70, 3, 9, 127, 64, 0, 33, 100])}
  results = []
  for m in (None, mesh):
    loss = bound("role", role_context(num_examples=128, mesh=m),
                 expected_positives=1.0)
    state = loss.init(4)
    if m is not None:
      sharding = jax.sharding.NamedSharding(m, losses.P("data"))
      state = jax.device_put(state, jax.tree.map(
          functools.partial(jax.sharding.NamedSharding, m),
          losses.state_specs(state)))
      batch_in = {k: (jax.device_put(v, sharding) if v.ndim else v)
                  for k, v in batch.items()}
      logits_in = jax.device_put(logits, sharding)
      targets_in = jax.device_put(targets, sharding)
    else:
      batch_in, logits_in, targets_in = batch, logits, targets
    value, new = jax.jit(loss)(logits_in, targets_in, batch_in, state)
    if m is not None:  # Never replicated: each device holds 16 rows.
      shard = new["rows"]["label_logits"].addressable_shards[0]
      assert shard.data.shape == (16, 4)
    results.append((float(value), jax.tree.map(np.asarray, new)))
  assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
  for one, eight in zip(jax.tree.leaves(results[0][1]),
                        jax.tree.leaves(results[1][1])):
    np.testing.assert_allclose(one, eight, rtol=1e-5, atol=1e-6)


def test_asset_regularisation_adds_bce_to_the_running_average():
  context = losses.LossContext(num_examples=5)
  base = losses.LOSSES.get("an")
  loss = losses.with_asset_regularisation(base, weight=0.5, rate=0.1,
                                          context=context)
  state = loss.init(4)
  table = np.asarray(state["rows"]["asset"], np.float64)
  value, new = value_of(loss, state=state)
  # Known positives are pinned to 1; the known negative (example 0, class
  # 3) is not pinned: it keeps the running average.
  positive = MASK * TARGETS
  average = positive * TARGETS + (1 - positive) * table[[3, 1]]
  assert average[0, 3] == table[3, 3]
  expected = (np_bce(LOGITS, TARGETS).mean() +
              0.5 * np_bce(LOGITS, average).mean())
  assert value == pytest.approx(expected, rel=1e-5)
  updated = table.copy()
  updated[[3, 1]] = 0.9 * average + 0.1 * sigmoid(LOGITS)
  np.testing.assert_allclose(np.asarray(new["rows"]["asset"]), updated,
                             rtol=1e-5)


def test_asset_regularisation_keys_rows_by_asset_where_clips_share_one():
  # L48: two clips (examples 3 and 1) of the same recording, asset row 0.
  context = losses.LossContext(num_examples=5, num_assets=2)
  loss = losses.with_asset_regularisation(losses.LOSSES.get("an"), 0.5, 0.1,
                                          context)
  state = loss.init(4)
  table = np.asarray(state["rows"]["asset"], np.float64)
  _, new = value_of(loss, batch={**BATCH, "asset_index": jnp.asarray([0, 0])},
                    state=state)
  updated = np.asarray(new["rows"]["asset"])
  assert not np.allclose(updated[0], table[0])
  np.testing.assert_array_equal(updated[1:], table[1:])


def config(**fields):
  c = ml_collections.ConfigDict({"loss": "an", "loss_options": {},
                                 "asset_reg": {"weight": 0.0, "rate": 0.001}})
  c.update(fields)
  return c


def test_from_config_binds_options_and_refuses_unknown_ones():
  loss = losses.from_config(config(loss="em", loss_options={"alpha": 0.3}),
                            losses.LossContext())
  assert loss.options == {"alpha": 0.3}
  with pytest.raises(registry.ConfigError, match=r"\['alpah'\].*\['alpha'\]"):
    losses.from_config(config(loss="em", loss_options={"alpah": 0.3}),
                       losses.LossContext())
  with pytest.raises(registry.ConfigError, match="choose from"):
    losses.from_config(config(loss="rolee"), losses.LossContext())


def test_from_config_needs_an_expected_positive_count_for_epr_and_role():
  with pytest.raises(registry.ConfigError, match="expected_positives"):
    losses.from_config(config(loss="epr"), losses.LossContext())
  loss = losses.from_config(config(loss="role"),
                            losses.LossContext(expected_positives=1.3))
  assert losses.uses_rows(loss)


def test_from_config_wraps_any_multilabel_loss_with_asset_regularisation():
  loss = losses.from_config(
      config(loss="wan", asset_reg={"weight": 1.0, "rate": 0.01}),
      losses.LossContext(num_examples=10))
  assert losses.uses_rows(loss)
  with pytest.raises(registry.ConfigError, match="multilabel"):
    losses.from_config(config(loss="softmax_ce",
                              asset_reg={"weight": 1.0, "rate": 0.01}),
                       losses.LossContext())


def test_state_specs_shard_only_rows():
  specs = losses.state_specs({"rows": {"a": jnp.zeros((64, 2))},
                              "loss": {"b": jnp.zeros(3)}})
  assert specs["rows"]["a"] == losses.P("data")
  assert specs["loss"]["b"] == losses.P()



# -- The long tail -------------------------------------------------------------

def test_logit_adjustment_adds_tau_log_prior_before_the_softmax():
  context = losses.LossContext(class_counts=(3.0, 1.0, 0.0))
  loss = losses.from_config(config(loss="logit_adjusted_ce"), context)
  assert not loss.multilabel
  target = jnp.array([[0.0, 1.0, 0.0]])
  value, _ = loss(jnp.zeros((1, 3)), target, {}, loss.init(3))
  # Priors 3 : 1 : 0.5 (a label never seen counts half an example).
  prior = np.array([3.0, 1.0, 0.5]) / 4.5
  np.testing.assert_allclose(value, -np.log(prior[1] / prior.sum()),
                             rtol=1e-6)
  # tau = 0 is the plain softmax cross-entropy.
  plain = losses.from_config(config(loss="logit_adjusted_ce",
                                    loss_options={"tau": 0.0}), context)
  logits = jnp.array([[0.3, -1.0, 2.0]])
  np.testing.assert_allclose(
      plain(logits, target, {}, ())[0],
      losses.LOSSES.get("softmax_ce")(logits, target, {}, ())[0], rtol=1e-6)


def test_balanced_softmax_is_ren_et_al_s_count_weighted_softmax():
  counts = (5.0, 2.0, 1.0)
  loss = losses.from_config(config(loss="balanced_softmax"),
                            losses.LossContext(class_counts=counts))
  logits = np.array([[0.5, -0.2, 1.0]])
  weighted = np.exp(logits[0]) * np.array(counts)
  expected = -np.log(weighted[2] / weighted.sum())
  value, _ = loss(jnp.asarray(logits), jnp.array([[0.0, 0.0, 1.0]]), {}, ())
  np.testing.assert_allclose(value, expected, rtol=1e-6)


def test_logit_adjustment_without_label_counts_is_refused():
  with pytest.raises(registry.ConfigError, match="label counts"):
    losses.from_config(config(loss="balanced_softmax"), losses.LossContext())


def test_the_run_gives_the_loss_its_train_split_label_counts(small_dataset):
  schedule = optax.constant_schedule(0.5)
  context = train.loss_context(small_dataset, "train", 7, None, schedule)
  # And its steps per epoch (the large-loss schedule) and learning rate
  # (ROLE's table).
  assert context.steps_per_epoch == 7 and context.learning_rate is schedule
  counts = data.label_counts(small_dataset)["train"]
  assert context.class_counts == tuple(float(n) for n in counts)
  assert sum(context.class_counts) == (
      small_dataset.info.splits["train"].num_examples)
