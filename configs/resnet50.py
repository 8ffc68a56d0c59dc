"""ResNet-50 on iNatSounds, the iNatSounds paper's main recipe.

    python -m inatsounds_jax.main --config=configs/resnet50.py \
        --workdir=$HOME/runs/resnet50 \
        --config.manual_dir=/data/inat_sounds \
        --config.init_checkpoint=/data/weights/resnet50-11ad3fa6.pth

`manual_dir` holds the release's archives or extracted folders; the first
run builds the TFDS records into `data_dir`. `init_checkpoint` is a
torchvision ImageNet checkpoint (the paper's 37 -> 58 top-1 difference).
Other depths: `--config.model=resnet18` or `resnet101`.

CPU smoke run on a small synthetic corpus:

    python -m inatsounds_jax.main --config=configs/resnet50.py:tiny \
        --workdir=/tmp/resnet50_tiny
"""

from inatsounds_jax import config_defaults


def get_config(variant: str = ""):
  c = config_defaults.classifier()
  c.model = "resnet50"
  if variant == "tiny":
    c = config_defaults.tiny(c)
    c.model = "resnet18"
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; use '' or 'tiny'")
  return c
