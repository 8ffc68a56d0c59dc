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

import ml_collections

from inatsounds_jax import config_defaults


def get_config(variant: str = ""):
  c = ml_collections.ConfigDict()
  c.job = "range_model"
  c.dataset = "full"
  c.data_dir = ""
  c.manual_dir = ""
  c.dataset_options = ml_collections.ConfigDict()
  c.observations_csv = ""  # Instead of the dataset's train split.
  c.epochs = 20
  c.batch_size = 2048
  c.learning_rate = 5e-4
  c.lr_decay_per_epoch = 0.98
  c.width = 256
  c.depth = 4
  c.dropout = 0.5
  c.pos_weight = 2048.0
  c.threshold = 0.1  # For the reported fraction of true ranges kept.
  c.map_species = ""  # Comma-separated names; "" = the 6 most observed.
  c.seed = 0
  if variant == "synthetic":
    c.dataset = "synthetic"
    # ~1,100 observations: smaller batches and a higher rate give enough
    # steps (the release's 137k give 67 steps per epoch at 2048).
    c.epochs = 100
    c.batch_size = 256
    c.learning_rate = 2e-3
  elif variant == "tiny":
    c.dataset = "synthetic"
    c.dataset_options = dict(config_defaults.TINY_DATASET)
    c.epochs = 2
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; use '', 'synthetic' or "
                     "'tiny'")
  return c
