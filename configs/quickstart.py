"""Quickstart: train and evaluate on the built-in synthetic corpus, on CPU.

    python -m inatsounds_jax.main --config=configs/quickstart.py \
        --workdir=/tmp/inatsounds_quickstart

The first run writes the 50-species synthetic corpus in the official release
format and builds its TFDS records (under TFDS's data dir, about a minute),
then trains the SINR range model on the train split's locations (seconds)
and a small MobileNet-V3 from scratch, and evaluates the classifier on
validation and test without a geographic prior, with the SINR prior, and
with the corpus's true ranges as prior (the "ceiling" no range model can
pass).
About 10 minutes on 2 CPU cores. The model sees the paper's spectrogram
(128 mel x 512 frames), resized to 64 x 256 and kept at one channel, which
CPU training can afford; the recipes in this folder use the paper's
3 x 224 x 224.
"""

from inatsounds_jax import config_defaults


def get_config():
  c = config_defaults.classifier()
  c.dataset = "synthetic"
  c.model = "mobilenet_v3_small"
  c.image.size = (64, 256)
  c.image.channels = 1
  # A short run underfits: no dropout or SpecAugment, and running batch-norm
  # statistics that keep up within ~250 steps.
  c.model_options.bn_momentum = 0.9
  c.model_options.dropout = 0.0
  c.augment.freq_mask_max_width = 0
  c.augment.time_mask_max_width = 0
  c.optimizer = "adam"
  c.learning_rate = 3e-3
  c.weight_decay = 0.0
  c.batch_size = 32
  c.num_epochs = 6.0
  c.warmup_epochs = 0.5
  c.eval_batch_size = 64
  # Evaluation costs time on CPU: once, at the end.
  c.evals.validation.every_epochs = 6.0
  c.shuffle_buffer = 1200
  # The library's own geographic prior: SINR trained on the corpus's train
  # split first (seconds), with the true ranges reported as the ceiling.
  c.range_model = config_defaults.range_model("synthetic")
  c.geo_ceiling_prior = "synthetic_truth"
  c.log_every_steps = 10
  c.checkpoint_every_steps = 50
  return c
