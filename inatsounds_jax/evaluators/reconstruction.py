"""Masked-autoencoder evaluation: reconstruction loss on held-out windows.

For a model whose outputs are `models.mae.MaskedAutoencoder`'s (a dict with
per-window `loss`, `mask`, `predictions`, ...): the masked-patch loss over
the dense windows of a split (masks from the model's fixed evaluation key,
so checkpoints are compared on the same masks), and figures of the first
windows as in the MAE study's Figure 2 (Liu et al. 2026): input, masked
input, and reconstruction (predicted masked patches, mapped back from the
per-patch-normalised space with each patch's own mean and deviation, beside
the visible patches).

Options (`config.evals.<name>`): `split`; `max_windows` (0 = every window;
else about that many, whole batches); `num_figures` (windows drawn).

Metrics: `loss`.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from inatsounds_jax import input_pipeline
from inatsounds_jax import plots
from inatsounds_jax import registry
from inatsounds_jax.evaluators import common
from inatsounds_jax.models import mae as mae_lib


def figure_images(out: dict, row: int) -> tuple[np.ndarray, ...]:
  """(input, masked input, reconstruction) `[H, W]` of window `row` of a
  batch of MAE outputs; masked patches of the masked input are NaN."""
  image = out["image"][row]
  h, w, channels = image.shape
  n = out["mask"].shape[1]
  patch = int(round(np.sqrt(h * w / n)))
  grid = (h // patch, w // patch)
  masked = out["mask"][row].astype(bool)[:, None]
  inputs = mae_lib.patchify(image[None], patch)[0]
  predicted = (out["predictions"][row] * out["patch_std"][row] +
               out["patch_mean"][row])

  def to_image(patches):
    return np.asarray(mae_lib.unpatchify(patches[None], grid, patch,
                                         channels))[0, :, :, 0]

  return (image[:, :, 0], to_image(np.where(masked, np.nan, inputs)),
          to_image(np.where(masked, predicted, inputs)))


def plot_reconstructions(path: str, examples: list[tuple[np.ndarray, ...]]
                         ) -> str:
  plt = plots.pyplot()
  fig, axes = plt.subplots(len(examples), 3, squeeze=False,
                           figsize=(12, 1.6 * len(examples) + 0.6))
  for r, images in enumerate(examples):
    low = np.nanmin(images[0])
    high = np.nanmax(images[0])
    for c, (title, image) in enumerate(zip(
        ("input", "masked input", "reconstruction"), images)):
      ax = axes[r, c]
      # Row 0 is the highest band (frontend.py): drawn at the top.
      ax.imshow(image, origin="upper", aspect="auto", vmin=low, vmax=high,
                cmap="magma")
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        ax.set_title(title)
  return plots.save(fig, path)


class Evaluator:
  """Reconstruction loss of one split (see the module docstring)."""

  def __init__(self, context: common.EvalContext, *, split: str,
               max_windows: int = 0, num_figures: int = 4):
    splits = context.builder.info.splits
    if split not in splits:
      raise registry.ConfigError(
          f"split {split!r} is not in the dataset; it has {sorted(splits)}")
    if max_windows < 0 or num_figures < 0:
      raise registry.ConfigError(
          f"max_windows={max_windows} and num_figures={num_figures} must "
          "be >= 0")
    self.context, self.split = context, split
    self.max_windows, self.num_figures = max_windows, num_figures
    self.metric_names = ("loss",)
    self.row_keys = ()

  def run(self, predict: common.PredictFn) -> common.EvalOutput:
    c = self.context
    total, count, examples = 0.0, 0, []
    batches = common.in_step_with_other_processes(tfds.as_numpy(
        input_pipeline.eval_dataset(c.builder, self.split, c.batch_size,
                                    c.windows)))
    for i, batch in enumerate(batches):
      out = predict(batch["waveform"])
      valid = batch["mask"].astype(bool)
      total += float(out["loss"][valid].sum())
      count += int(valid.sum())
      for row in np.flatnonzero(valid)[:self.num_figures - len(examples)]:
        examples.append(figure_images(out, row))
      # Every process stops after the same number of batches.
      if self.max_windows and (i + 1) * c.batch_size >= self.max_windows:
        break
    total = float(common.sum_over_processes(total))
    count = int(common.sum_over_processes(count))
    loss = total / max(count, 1)
    return common.EvalOutput(
        metrics={"loss": loss},
        summary={"loss": loss, "num_windows": count},
        text=f"{self.split}: reconstruction loss {loss:.4f} on {count} "
             "windows (masked patches)",
        write_artefacts=lambda prefix: [plot_reconstructions(
            prefix + "_reconstructions.png", examples)] if examples else [])
