"""A trained range model: training, saving, loading, import and quality.

`RangeModel` bundles a `sinr.SINR`, its parameters and the species list its
outputs stand for. It is trained from any table of (latitude, longitude,
species) observations (`observations_from_tfds`, `observations_from_csv`),
saved as a folder (`params/` orbax checkpoint + `range_model.json`), imported
from the published SINR PyTorch checkpoints, and turned into a
`prior.GeoPrior` for a classifier's label list.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from inatsounds_jax import metrics as metrics_lib
from inatsounds_jax import plots
from inatsounds_jax import sphere
from inatsounds_jax import storage
from inatsounds_jax import workdir as workdir_lib
from inatsounds_jax.geo import sinr

METADATA_FILE = "range_model.json"


@dataclasses.dataclass
class Observations:
  """Presence-only observations; `species` indexes `species_names`."""
  latitude: np.ndarray
  longitude: np.ndarray
  species: np.ndarray
  species_names: list[str]

  def __post_init__(self):
    self.latitude = np.asarray(self.latitude, np.float64)
    self.longitude = np.asarray(self.longitude, np.float64)
    self.species = np.asarray(self.species, np.int64)

  def located(self) -> "Observations":
    """Only the observations with both coordinates."""
    keep = np.isfinite(self.latitude) & np.isfinite(self.longitude)
    return Observations(self.latitude[keep], self.longitude[keep],
                        self.species[keep], self.species_names)


def _check_coordinates(lat, lon, where: str,
                       locate: Callable[[int], str]) -> None:
  """Raises on coordinates off the globe; `locate(i)` names observation i.

  Missing coordinates (NaN) pass.
  """
  bad = (np.abs(lat) > 90) | (np.abs(lon) > 180)
  if bad.any():
    i = int(np.argmax(bad))
    raise ValueError(f"{where}: {int(bad.sum())} observations have "
                     f"coordinates out of range, first latitude {lat[i]}, "
                     f"longitude {lon[i]} ({locate(i)})")


def observations_from_tfds(builder, split: str = "train") -> Observations:
  """(lat, lon, label) of every recording of a built iNatSounds split."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  ds = builder.as_dataset(split=split,
                          decoders={"audio": tfds.decode.SkipDecoding()})
  ds = ds.map(lambda x: (x["latitude"], x["longitude"], x["label"]))
  lat, lon, label = [], [], []
  for batch in tfds.as_numpy(ds.batch(4096)):
    lat.append(batch[0])
    lon.append(batch[1])
    label.append(batch[2])
  obs = Observations(np.concatenate(lat), np.concatenate(lon),
                     np.concatenate(label),
                     list(builder.info.features["label"].names))
  _check_coordinates(obs.latitude, obs.longitude, f"{builder.name} {split}",
                     lambda i: f"example {i} in reading order")
  return obs


def observations_from_csv(path: str) -> Observations:
  """A CSV with columns `latitude`, `longitude`, `species` (a name).

  UTF-8, with or without a byte-order mark (as spreadsheets save it). Rows
  with an empty coordinate are kept (and skipped in training); blank rows are
  skipped. Errors give the row number a spreadsheet shows (the header is row
  1, blank rows count).
  """
  lat, lon, names, rows = [], [], [], []
  with open(path, newline="", encoding="utf-8-sig") as f:
    reader = csv.reader(f)
    header = next(reader, [])
    missing = {"latitude", "longitude", "species"} - set(header)
    if missing:
      raise ValueError(f"{path}: missing column(s) {sorted(missing)}; found "
                       f"{header}")
    column = {name: header.index(name)
              for name in ("latitude", "longitude", "species")}
    for row_number, values in enumerate(reader, start=2):
      if not any(v.strip() for v in values):
        continue
      row = {name: values[i].strip() if i < len(values) else ""
             for name, i in column.items()}
      try:
        lat.append(float(row["latitude"]) if row["latitude"] else np.nan)
        lon.append(float(row["longitude"]) if row["longitude"] else np.nan)
      except ValueError:
        raise ValueError(f"{path}, row {row_number}: coordinates "
                         f"{row['latitude']!r}, {row['longitude']!r} are not "
                         "numbers") from None
      if not row["species"]:
        raise ValueError(f"{path}, row {row_number}: empty species")
      names.append(row["species"])
      rows.append(row_number)
  if not names:
    raise ValueError(f"{path}: no observations")
  species_names = sorted(set(names))
  index = {n: i for i, n in enumerate(species_names)}
  obs = Observations(lat, lon, [index[n] for n in names], species_names)
  _check_coordinates(obs.latitude, obs.longitude, path,
                     lambda i: f"row {rows[i]}")
  return obs


@dataclasses.dataclass
class RangeModel:
  """A SINR model, its parameters and the species its outputs stand for."""
  model: sinr.SINR
  params: dict
  species_names: list[str]

  def presence(self, lat, lon, chunk: int = 65536) -> np.ndarray:
    """`[n, species]` presence probabilities."""
    lat = np.asarray(lat, np.float32).reshape(-1)
    lon = np.asarray(lon, np.float32).reshape(-1)
    apply = _jitted_presence(self.model)
    return np.concatenate(
        [np.asarray(apply(self.params, lat[i:i + chunk], lon[i:i + chunk]))
         for i in range(0, max(len(lat), 1), chunk)], axis=0)

  def save(self, directory: str) -> None:
    directory = storage.resolve(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckpt:
      ckpt.save(directory / "params", self.params, force=True)
    storage.write_json(directory / METADATA_FILE, {
        "species": self.species_names, "width": self.model.width,
        "depth": self.model.depth, "dropout": self.model.dropout})

  @classmethod
  def load(cls, directory: str) -> "RangeModel":
    directory = storage.resolve(directory)
    meta_path = directory / METADATA_FILE
    if not meta_path.exists():
      raise FileNotFoundError(
          f"{meta_path} not found: not a range model folder (train one with "
          "configs/sinr.py, or import a SINR checkpoint)")
    meta = storage.read_json(meta_path)
    model = sinr.SINR(len(meta["species"]), width=meta["width"],
                      depth=meta["depth"], dropout=meta["dropout"])
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4)))["params"])
    with ocp.StandardCheckpointer() as ckpt:
      params = ckpt.restore(directory / "params", abstract)
    return cls(model, params, list(meta["species"]))


@functools.lru_cache(maxsize=None)
def _jitted_presence(model: sinr.SINR) -> Callable:
  return jax.jit(lambda params, lat, lon: jax.nn.sigmoid(
      model.apply({"params": params}, sinr.encode(lat, lon))))


# ---------------------------------------------------------------------------
# Training.
# ---------------------------------------------------------------------------

def train(observations: Observations, *, epochs: int = 20,
          batch_size: int = 2048, learning_rate: float = 5e-4,
          lr_decay_per_epoch: float = 0.98, width: int = 256, depth: int = 4,
          dropout: float = 0.5, pos_weight: float = sinr.POS_WEIGHT,
          seed: int = 0, log: Callable[[int, float], None] | None = None
          ) -> RangeModel:
  """SINR with the "an_full" loss and Adam (Cole et al. 2023, s.3-4).

  Observations without coordinates are skipped. `log(epoch, mean_loss)` is
  called after every epoch.
  """
  obs = observations.located()
  n = len(obs.species)
  if n == 0:
    raise ValueError("no observation has coordinates; cannot train a range "
                     "model")
  batch_size = min(batch_size, n)
  steps_per_epoch = n // batch_size
  model = sinr.SINR(len(obs.species_names), width=width, depth=depth,
                    dropout=dropout)
  rng = jax.random.PRNGKey(seed)
  init_rng, rng = jax.random.split(rng)
  params = model.init(init_rng, jnp.zeros((1, 4)))["params"]
  tx = optax.adam(optax.exponential_decay(
      learning_rate, transition_steps=steps_per_epoch,
      decay_rate=lr_decay_per_epoch, staircase=True))
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, rng, lat, lon, species):
    dropout_rng, random_rng = jax.random.split(rng)
    rand_lat, rand_lon = sinr.random_locations(random_rng, lat.shape[0])
    inputs = sinr.encode(jnp.concatenate([lat, rand_lat]),
                         jnp.concatenate([lon, rand_lon]))

    def loss_fn(p):
      logits = model.apply({"params": p}, inputs, train=True,
                           rngs={"dropout": dropout_rng})
      return sinr.assume_negative_full_loss(
          logits[:lat.shape[0]], species, logits[lat.shape[0]:], pos_weight)

    value, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  lat = obs.latitude.astype(np.float32)
  lon = obs.longitude.astype(np.float32)
  order_rng = np.random.default_rng(seed)
  for epoch in range(epochs):
    order = order_rng.permutation(n)
    losses = []
    for s in range(steps_per_epoch):
      idx = order[s * batch_size:(s + 1) * batch_size]
      rng, step_rng = jax.random.split(rng)
      params, opt_state, value = step(params, opt_state, step_rng, lat[idx],
                                      lon[idx], obs.species[idx])
      losses.append(value)
    mean_loss = float(np.mean(jax.device_get(losses)))
    if not np.isfinite(mean_loss):
      raise FloatingPointError(f"range model loss became {mean_loss} in "
                               f"epoch {epoch + 1}; lower learning_rate")
    if log is not None:
      log(epoch + 1, mean_loss)
  return RangeModel(model, params, list(obs.species_names))


# ---------------------------------------------------------------------------
# Quality against known ranges, and maps.
# ---------------------------------------------------------------------------

def sphere_points(n: int) -> tuple[np.ndarray, np.ndarray]:
  """(lat, lon) of a Fibonacci lattice: `n` points evenly over the sphere."""
  i = np.arange(n) + 0.5
  lat = np.degrees(np.arcsin(1.0 - 2.0 * i / n))
  lon = (np.degrees(np.pi * (1.0 + 5.0 ** 0.5) * i) + 180.0) % 360.0 - 180.0
  return lat, lon


def quality(presence: np.ndarray, truth: np.ndarray,
            threshold: float = 0.1) -> dict:
  """Range quality over evenly spread points.

  Args:
    presence: `[points, species]` scores (higher = more likely present).
    truth: bool `[points, species]`, inside the true range.

  Returns:
    map: mean over species of the AP of presence against the true range;
    kept: mean fraction of each true range with presence >= threshold;
    masked_outside: mean fraction of each species' outside area masked.
  """
  ap, _ = metrics_lib.per_class_ap_and_best_f1(presence, truth)
  above = presence >= threshold
  with np.errstate(invalid="ignore"):
    kept = (above & truth).sum(0) / truth.sum(0)
    masked = (~above & ~truth).sum(0) / (~truth).sum(0)
  return {"map": float(np.nanmean(ap)), "kept": float(np.nanmean(kept)),
          "masked_outside": float(np.nanmean(masked)),
          "num_species": int((truth.sum(0) > 0).sum())}


def true_ranges(species_ranges_path: str, species_names: Sequence[str],
                lat, lon) -> np.ndarray:
  """bool `[points, species]` from the synthetic `species_ranges.json`."""
  ranges = {s["name"]: s["ranges"]
            for s in storage.read_json(species_ranges_path)}
  missing = [n for n in species_names if n not in ranges]
  if missing:
    raise ValueError(f"{species_ranges_path} has no range for {missing[:3]}")
  lat = np.asarray(lat, np.float64).reshape(-1)
  lon = np.asarray(lon, np.float64).reshape(-1)
  return np.stack([sphere.in_range(ranges[n], lat, lon)
                   for n in species_names], axis=1)


def plot_range_maps(presence_fn: Callable, species_names: Sequence[str],
                    species: Sequence[str], path: str,
                    resolution_deg: float = 2.0) -> str:
  """One longitude/latitude panel of presence per species, as a PNG."""
  plt = plots.pyplot()
  unknown = [s for s in species if s not in species_names]
  if unknown:
    raise ValueError(f"not in the range model: {unknown}")
  lats = np.arange(90.0, -90.0, -resolution_deg) - resolution_deg / 2
  lons = np.arange(-180.0, 180.0, resolution_deg) + resolution_deg / 2
  grid_lat, grid_lon = np.meshgrid(lats, lons, indexing="ij")
  p = presence_fn(grid_lat.ravel(), grid_lon.ravel())
  cols = min(len(species), 3)
  rows = -(-len(species) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 2.6 * rows),
                           squeeze=False)
  for ax, name in zip(axes.ravel(), species):
    column = p[:, list(species_names).index(name)].reshape(grid_lat.shape)
    image = ax.imshow(column, extent=(-180, 180, -90, 90), vmin=0, vmax=1,
                      cmap="viridis")
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
  for ax in axes.ravel()[len(species):]:
    ax.axis("off")
  fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8,
               label="presence probability")
  return plots.save(fig, path, dpi=100)


# ---------------------------------------------------------------------------
# Published SINR checkpoints (PyTorch).
# ---------------------------------------------------------------------------

def from_sinr_torch(path: str, taxon_names: dict | None = None) -> RangeModel:
  """A published SINR checkpoint (`{"state_dict", "params"}`) as a model.

  `params["class_to_taxa"]` gives the iNaturalist taxon id of each output;
  `taxon_names` maps taxon ids to the names a classifier uses (e.g. from the
  iNatSounds categories), since priors match labels by name. Unmapped taxa
  are named by their id.
  """
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ImportError("reading a PyTorch SINR checkpoint needs torch "
                      "(pip install torch)") from None
  checkpoint = torch.load(path, map_location="cpu", weights_only=True)
  if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
    raise ValueError(f"{path}: not a SINR checkpoint (no 'state_dict')")
  state = {k: v.numpy() for k, v in checkpoint["state_dict"].items()}
  options = checkpoint.get("params", {})
  encoding = options.get("input_enc", "sin_cos")
  if encoding != "sin_cos" or state["feats.0.weight"].shape[1] != 4:
    raise ValueError(f"{path}: input encoding {encoding!r} with "
                     f"{state['feats.0.weight'].shape[1]} inputs; only "
                     "'sin_cos' (4 inputs, no environmental features) is "
                     "supported")
  depth = sum(1 for k in state if k.endswith(".w1.weight"))
  width, num_species = state["feats.0.weight"].shape[0], len(
      state["class_emb.weight"])

  def dense(prefix, bias=True):
    out = {"kernel": state[prefix + ".weight"].T}
    if bias:
      out["bias"] = state[prefix + ".bias"]
    return out

  params = {"input": dense("feats.0"),
            "species": dense("class_emb", bias=False)}
  for i in range(depth):
    params[f"block{i}"] = {"w1": dense(f"feats.{2 + i}.w1"),
                           "w2": dense(f"feats.{2 + i}.w2")}
  taxa = options.get("class_to_taxa", list(range(num_species)))
  if len(taxa) != num_species:
    raise ValueError(f"{path}: {len(taxa)} taxa for {num_species} outputs")
  names = [str((taxon_names or {}).get(t, t)) for t in taxa]
  model = sinr.SINR(num_species, width=width, depth=depth)
  return RangeModel(model, jax.tree.map(jnp.asarray, params), names)


def load(path: str) -> RangeModel:
  """A range model from a training workdir, a saved folder, or a SINR .pt."""
  folder = storage.resolve(path)
  if folder.is_file():
    return from_sinr_torch(path)
  nested = folder / workdir_lib.SAVED_RANGE_MODEL_DIR
  return RangeModel.load(nested if nested.is_dir() else folder)
