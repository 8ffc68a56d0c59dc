"""Masked-autoencoder pretraining on iNatSounds (the MAE study's recipe).

    python -m inatsounds_jax.main --config=configs/mae_pretrain.py \
        --workdir=$HOME/runs/mae_vit_b16 --config.manual_dir=/data/inat_sounds

ViT-B/16 encoder on the paper's 128 x 512 single-channel spectrogram windows,
80 % of the 16 x 16 patches masked at random, AudioMAE's 16-block decoder
with shifted local-window attention, masked-patch MSE against per-patch-
normalised targets; AdamW (0.9, 0.95), weight decay 1e-4, learning rate
1e-3 x batch / 256, warm-up then cosine, 100 epochs (Liu et al. 2026, s.
4.2; Huang et al. 2022), an epoch being every 3-s clip of every recording
at 1.5-s stride, as the study cuts them (`train_epoch_unit="clip"`;
"recording" reads one random window per recording instead). Labels are
not used. Validation reports the
reconstruction loss every epoch and draws input / masked / reconstruction
figures (`WORKDIR/validation_reconstructions.png`); the best checkpoint is
the one with the lowest validation loss.

Variants by flag: `--config.mae.decoder=global` (8 global blocks),
`--config.mae.mask_ratio=0.75` (Bird-MAE), `--config.mae.masking=time`
(whole time columns), `--config.model=vit_l16`. Fine-tune the result with
configs/mae_finetune.py (`--config.init_checkpoint=THIS_WORKDIR`).

Variants (comma-separated after the colon):
- `mixture`: pretrain on the train split and a folder of unlabelled audio
  (any wav/flac/ogg/mp3 below it, e.g. AudioSet clips), drawn 1 : 1 per
  window unless the weights are changed (the study's AudioSet : iNatSounds
  ratios, Liu et al. 2026, s. 4.6):

    --config=configs/mae_pretrain.py:mixture \
        --config.pretrain_sources.audio.path=/data/audioset \
        --config.pretrain_sources.audio.weight=3.0

  (`inatsounds_jax/data_sources.py` lists the source types);
- `tiny`: a CPU smoke run on a small synthetic corpus:

    python -m inatsounds_jax.main --config=configs/mae_pretrain.py:tiny \
        --workdir=/tmp/mae_tiny
"""

import ml_collections

from inatsounds_jax import config_defaults


VARIANTS = ("tiny", "mixture")


def get_config(variant: str = ""):
  words = set(filter(None, variant.split(",")))
  if words - set(VARIANTS):
    raise ValueError(f"unknown variant {variant!r}; combine {VARIANTS}")
  c = config_defaults.classifier()
  c.objective = "masked_reconstruction"
  c.model = "vit_b16"  # The encoder.
  c.image.size = (128, 512)  # The window's own size: no resize.
  c.image.channels = 1
  c.mae = ml_collections.ConfigDict({
      "mask_ratio": 0.8, "masking": "random", "decoder": "local",
      "decoder_width": 512, "decoder_depth": 0, "decoder_heads": 16,
      "local_window": (4, 4), "norm_pix_loss": True})
  # The masking is the augmentation.
  c.augment.freq_mask_max_width = 0
  c.augment.time_mask_max_width = 0
  c.batch_size = 256
  config_defaults.mae_optimizer(c, base_learning_rate=1e-3, weight_decay=1e-4,
                                betas=(0.9, 0.95))
  c.num_epochs = 100.0
  c.warmup_epochs = 3.0
  c.train_epoch_unit = "clip"
  c.eval_batch_size = 256
  c.evals = ml_collections.ConfigDict({"validation": {
      "type": "reconstruction", "split": "validation", "every_epochs": 1.0,
      "max_windows": 4096, "num_figures": 4}})
  c.best_metric = "validation/loss"
  c.best_mode = "min"
  if "mixture" in words:
    c.pretrain_sources = ml_collections.ConfigDict({
        "inatsounds": {"type": "tfds", "split": c.get_ref("train_split"),
                       "window_filter": c.get_ref("train_window_filter"),
                       "epoch_unit": c.get_ref("train_epoch_unit"),
                       "weight": 1.0},
        "audio": {"type": "audio_folder", "path": "", "weight": 1.0}})
  if "tiny" in words:
    c = config_defaults.tiny(c)
    c.model = "vit_mu16"
    c.image.size = (32, 64)
    c.mae.update(mask_ratio=0.75, decoder_width=64, decoder_depth=2,
                 decoder_heads=4, local_window=(2, 2))
  return c
