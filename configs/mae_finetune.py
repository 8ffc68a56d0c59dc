"""Fine-tuning, partial fine-tuning or linear probing of an MAE encoder.

    python -m inatsounds_jax.main --config=configs/mae_finetune.py \
        --workdir=$HOME/runs/mae_ft --config.manual_dir=/data/inat_sounds \
        --config.init_checkpoint=$HOME/runs/mae_vit_b16

`init_checkpoint` is the workdir of a pretraining run (configs/
mae_pretrain.py): its encoder is loaded, its decoder dropped. It may also be
a PyTorch MAE checkpoint in timm layout, with the variant of its source:
`audiomae` (AudioMAE's pretrained ViT-B, 1024 x 128 Kaldi fbank inputs) or
`birdmae` (Bird-MAE, 512 x 128):

    python -m inatsounds_jax.main --config=configs/mae_finetune.py:audiomae \
        --workdir=$HOME/runs/audiomae_ft --config.manual_dir=/data/inat_sounds \
        --config.init_checkpoint=/data/weights/audiomae_pretrained.pth

The variant sets the checkpoint's patch grid and layout (patch kernels and
position embeddings are transposed, reversed in frequency to our images'
highest-band-first rows and resampled to the 8 x 32 grid) and the image
normalisation the original used (`models.convert.input_normalization`:
AudioMAE's fine-tuning normalises each dataset by its own statistics,
Bird-MAE by its pretraining constants; the `dataset_statistics` or
`source_statistics` variant picks the other). The normalisation is computed
for the default frontend preset. For a checkpoint without class token add
`--config.model_options.class_token=False`. The classifier
is the same ViT on the same 128 x 512 single-channel windows, with the mean
of the patch tokens, a layer norm and a linear head; drop path 0.1,
layer-wise learning-rate decay 0.75 (AudioMAE's fine-tuning, Huang et al.
2022; MAE's base learning rate 5e-4 x batch / 256 and weight decay 0.05,
He et al. 2022, A.2), mixup and SpecAugment as in configs/vit.py, softmax
cross-entropy (`--config.loss=` any registered loss); an epoch is every
3-s clip at 1.5-s stride, as the study cuts recordings
(`train_epoch_unit="clip"`). Without
`init_checkpoint` it trains the same model from a random initialisation (the
study's baseline).

Variants (comma-separated after the colon):
- `audiomae`, `birdmae`: a checkpoint of that source (above);
  `dataset_statistics` / `source_statistics` choose its normalisation;
- `partial`: the embeddings and the first 6 blocks frozen
  (`--config.freeze_blocks=N` for another N); with
  `--config.train_fraction=0.1` (any fraction) it trains on that random
  share of the training recordings, the same share for every run with the
  same `--config.train_fraction_seed` (the study's sample-efficiency
  comparison, Liu et al. 2026, s. 4.5);
- `linear_probe`: the whole encoder frozen, MAE's non-affine batch norm
  before the linear head, no mixup or SpecAugment (Liu et al. 2026, s. 4.3);
- `tiny`: a CPU smoke run on a small synthetic corpus, e.g.

    python -m inatsounds_jax.main \
        --config=configs/mae_finetune.py:tiny,linear_probe \
        --workdir=/tmp/mae_probe_tiny --config.init_checkpoint=/tmp/mae_tiny
"""

from inatsounds_jax import config_defaults
from inatsounds_jax import frontend
from inatsounds_jax.models import convert

VARIANTS = ("tiny", "partial", "linear_probe", *convert.MAE_SOURCES,
            *(f"{name}_statistics" for name in convert.STATISTICS))


def get_config(variant: str = ""):
  words = set(filter(None, variant.split(",")))
  if words - set(VARIANTS):
    raise ValueError(f"unknown variant {variant!r}; combine {VARIANTS}")
  sources = sorted(words & set(convert.MAE_SOURCES))
  statistics = [name for name in convert.STATISTICS
                if f"{name}_statistics" in words]
  if len(sources) > 1 or len(statistics) > 1 or (statistics and not sources):
    raise ValueError(f"variant {variant!r}: name at most one checkpoint "
                     f"source {tuple(convert.MAE_SOURCES)} and at most one "
                     "*_statistics, the latter only with a source")
  c = config_defaults.classifier()
  c.model = "vit_b16"
  c.image.size = (128, 512)  # The MAE's input: the window's own size.
  c.image.channels = 1
  c.model_options.global_pool = "avg"
  c.model_options.drop_path = 0.1
  c.model_options.head_batchnorm = False
  c.model_options.class_token = True
  c.init_checkpoint_grid = ()  # A ViT file's patch grid; () = square.
  c.init_checkpoint_time_major = False
  c.batch_size = 256
  c.eval_batch_size = 256
  config_defaults.mae_optimizer(c, base_learning_rate=5e-4, weight_decay=0.05,
                                betas=(0.9, 0.999))
  c.warmup_epochs = 5.0
  c.train_epoch_unit = "clip"
  c.augment.mixup = True
  c.layer_decay = 0.75  # 0: off.
  c.freeze_blocks = 0
  c.linear_probe = False
  if sources:
    c.init_checkpoint_grid = convert.MAE_SOURCES[sources[0]].grid
    c.init_checkpoint_time_major = True
    c.image.mean, c.image.std = convert.input_normalization(
        sources[0], frontend.get_config(c.frontend_preset),
        statistics[0] if statistics else "")
  if "partial" in words:
    c.freeze_blocks = 6
  if "linear_probe" in words:
    c.linear_probe = True
    c.layer_decay = 0.0
    c.model_options.head_batchnorm = True
    c.model_options.drop_path = 0.0
    c.augment.mixup = False
    c.augment.freq_mask_max_width = 0
    c.augment.time_mask_max_width = 0
    c.weight_decay = 0.0
    c.base_learning_rate = 1e-3
  if "tiny" in words:
    c = config_defaults.tiny(c)
    c.model = "vit_mu16"
    c.image.size = (32, 64)
    if "partial" in words:
      c.freeze_blocks = 1
  return c
