"""Fine-tuning, partial fine-tuning or linear probing of an MAE encoder.

    python -m inatsounds_jax.main --config=configs/mae_finetune.py \
        --workdir=$HOME/runs/mae_ft --config.manual_dir=/data/inat_sounds \
        --config.init_checkpoint=$HOME/runs/mae_vit_b16

`init_checkpoint` is the workdir of a pretraining run (configs/
mae_pretrain.py): its encoder is loaded, its decoder dropped. It may also be
a PyTorch MAE checkpoint in timm layout (AudioMAE's pretrained ViT-B, whose
1024 x 128 inputs are time-major):

    --config.init_checkpoint=/data/weights/audiomae_pretrained.pth \
        --config.init_checkpoint_grid="(64, 8)" \
        --config.init_checkpoint_time_major=True

(patch kernels and position embeddings are transposed to our mel x time
images and resampled to the 8 x 32 grid; for a checkpoint without class
token add `--config.model_options.class_token=False`). The classifier
is the same ViT on the same 128 x 512 single-channel windows, with the mean
of the patch tokens, a layer norm and a linear head; drop path 0.1,
layer-wise learning-rate decay 0.75 (AudioMAE's fine-tuning, Huang et al.
2022; MAE's base learning rate 5e-4 x batch / 256 and weight decay 0.05,
He et al. 2022, A.2), mixup and SpecAugment as in configs/vit.py, softmax
cross-entropy (`--config.loss=` any registered loss). Without
`init_checkpoint` it trains the same model from a random initialisation (the
study's baseline).

Variants (comma-separated after the colon):
- `partial`: the embeddings and the first 6 blocks frozen
  (`--config.freeze_blocks=N` for another N);
- `linear_probe`: the whole encoder frozen, MAE's non-affine batch norm
  before the linear head, no mixup or SpecAugment (Liu et al. 2026, s. 4.3);
- `tiny`: a CPU smoke run on a small synthetic corpus, e.g.

    python -m inatsounds_jax.main \
        --config=configs/mae_finetune.py:tiny,linear_probe \
        --workdir=/tmp/mae_probe_tiny --config.init_checkpoint=/tmp/mae_tiny
"""

from inatsounds_jax import config_defaults

VARIANTS = ("tiny", "partial", "linear_probe")


def get_config(variant: str = ""):
  words = set(filter(None, variant.split(",")))
  if words - set(VARIANTS):
    raise ValueError(f"unknown variant {variant!r}; combine {VARIANTS}")
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
  c.augment.mixup = True
  c.layer_decay = 0.75  # 0: off.
  c.freeze_blocks = 0
  c.linear_probe = False
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
