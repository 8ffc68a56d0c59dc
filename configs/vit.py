"""ViT-B/16 on iNatSounds: Adam 1e-4, batch 256, mixup + SpecAugment (s.3).

    python -m inatsounds_jax.main --config=configs/vit.py \
        --workdir=$HOME/runs/vit_b16 \
        --config.manual_dir=/data/inat_sounds \
        --config.init_checkpoint=/data/weights/vit_base_patch16_224.safetensors

`init_checkpoint` is a timm ImageNet checkpoint; its position embeddings are
resampled to the image size. On many devices, `--config.shard_params=True`
shards parameters and optimizer state over the mesh, and
`--config.dtype=bfloat16` computes in bf16.

CPU smoke run on a small synthetic corpus:

    python -m inatsounds_jax.main --config=configs/vit.py:tiny \
        --workdir=/tmp/vit_tiny
"""

from inatsounds_jax import config_defaults


def get_config(variant: str = ""):
  c = config_defaults.classifier()
  c.model = "vit_b16"
  c.optimizer = "adam"
  c.learning_rate = 1e-4
  c.weight_decay = 0.0
  c.batch_size = 256
  c.eval_batch_size = 256
  c.augment.mixup = True
  c.model_options.drop_path = 0.1
  if variant == "tiny":
    c = config_defaults.tiny(c)
    c.model = "vit_ti16"
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; use '' or 'tiny'")
  return c
