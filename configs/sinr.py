"""SINR range model (geographic prior) from the iNatSounds train split.

    python -m inatsounds_jax.main --config=configs/sinr.py \
        --workdir=$HOME/runs/sinr --config.manual_dir=/data/inat_sounds

trains SINR (Cole et al. 2023, "Spatial Implicit Neural Representations for
Global-Scale Species Mapping") on the (latitude, longitude, species) of every
training recording, saves it to `DIR/range_model`, and writes range maps.
Any table of observations works instead: `--config.observations_csv=obs.csv`
(columns latitude, longitude, species). A classifier then uses it with
`--config.geo_prior=$HOME/runs/sinr`.

On the synthetic corpus, whose true ranges are known, the run also reports
range quality (AP against the truth):

    python -m inatsounds_jax.main --config=configs/sinr.py:synthetic \
        --workdir=/tmp/sinr_synthetic
"""

from inatsounds_jax import config_defaults


def get_config(variant: str = ""):
  if variant == "synthetic":
    return config_defaults.range_model("synthetic")
  c = config_defaults.range_model()
  if variant == "tiny":
    c.dataset = "synthetic"
    c.dataset_options = dict(config_defaults.TINY_DATASET)
    c.epochs = 2
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; use '', 'synthetic' or "
                     "'tiny'")
  return c
