"""Single-positive multi-label training on the Merlin L48 spectrogram clips.

The benchmark of Sun, Maji and Van Horn, "Merlin L48 Spectrogram Dataset"
(NeurIPS 2025, arXiv:2511.00252), with its recipe (s.5 and the authors'
train.py): ResNet-50 from ImageNet weights, clips resized to 448 x 448 and
normalised with ImageNet's statistics, no augmentation, Adam at 1e-4,
batch 16, 10 epochs; test score: mAP over the fully annotated test clips
(`strong/no_prior/window_map` here).

With the download extracted in /data/ml48s (plus the benchmark's
val_split.npy beside it, see `inatsounds_jax/l48.py`):

    python -m inatsounds_jax.main --config=configs/l48.py \
        --workdir=$HOME/runs/l48_an_target \
        --config.manual_dir=/data/ml48s \
        --config.init_checkpoint=/data/weights/resnet50-11ad3fa6.pth

Other cells of the study: `--config.label_mode=geo|checklist|full` (the
masks come with the data), `--config.loss=an_ls|em|wan|ll_r|ll_ct|ll_cp|
role|epr|full_bce`, `--config.asset_reg.weight=0.1` (asset
regularisation over each recording's clips).

CPU smoke run on a tiny fake in the authors' layout (what the tests run):

    python -m inatsounds_jax.main --config=configs/l48.py:tiny \
        --workdir=/tmp/l48_tiny --config.manual_dir=DIR_OF_THE_FAKE
"""

import ml_collections

from inatsounds_jax import config_defaults

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def get_config(variant: str = ""):
  c = config_defaults.classifier()
  c.dataset = "l48"
  c.frontend_preset = "image"  # The clips are the spectrograms.
  c.model = "resnet50"
  c.image = ml_collections.ConfigDict({
      "size": (448, 448), "channels": 3, "mean": IMAGENET_MEAN,
      "std": IMAGENET_STD})
  c.augment.freq_mask_max_width = 0
  c.augment.time_mask_max_width = 0
  c.loss = "an"
  c.label_mode = "target_only"
  c.optimizer = "adam"
  c.learning_rate = 1e-4
  c.weight_decay = 0.0
  c.batch_size = 16
  c.num_epochs = 10.0
  c.warmup_epochs = 0.0
  c.final_lr_factor = 1.0  # A constant learning rate, as the benchmark.
  c.eval_batch_size = 64
  c.evals = ml_collections.ConfigDict({
      split: {"type": "strong_label", "split": split,
              "every_epochs": 1.0 if split == "validation" else 0.0,
              "bootstrap": 0, "save_rows": False}
      for split in ("validation", "test")})
  # Recording level: each test asset's clips pooled, scored against its
  # target species (top-1, mAP; no geographic prior, L48 has no locations).
  c.evals.test_assets = {"type": "file_level", "split": "test",
                         "every_epochs": 0.0, "bootstrap": 0,
                         "save_rows": False}
  c.best_metric = "validation/no_prior/window_map"
  if variant == "tiny":
    c.update(init_checkpoint="", model="placeholder", batch_size=8,
             eval_batch_size=8, num_epochs=2.0, log_every_steps=1,
             checkpoint_every_steps=2, shuffle_buffer=64)
    c.image.size = (32, 32)
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; use '' or 'tiny'")
  return c
