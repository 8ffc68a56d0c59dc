"""MobileNet-V3-Large on iNatSounds with the paper's SGD recipe (s.3).

    python -m inatsounds_jax.main --config=configs/mobilenet_v3.py \
        --workdir=$HOME/runs/mobilenet_v3 \
        --config.manual_dir=/data/inat_sounds \
        --config.init_checkpoint=/data/weights/mobilenet_v3_large-8738ca79.pth

CPU smoke run on a small synthetic corpus:

    python -m inatsounds_jax.main --config=configs/mobilenet_v3.py:tiny \
        --workdir=/tmp/mobilenet_v3_tiny
"""

from inatsounds_jax import config_defaults


def get_config(variant: str = ""):
  c = config_defaults.classifier()
  c.model = "mobilenet_v3_large"
  c.model_options.dropout = 0.2
  if variant == "tiny":
    c = config_defaults.tiny(c)
    c.model = "mobilenet_v3_small"
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; use '' or 'tiny'")
  return c
