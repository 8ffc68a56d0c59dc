"""`GeoPrior`: a range model's presence, matched to a classifier's labels.

A range model covers its own species list; a classifier has another. The two
are matched by species name, never by index. Rules the users asked for:
missing coordinates mask nothing; species the range model does not cover are
never masked; the prior's probability can be reported instead of applied.

The one way to load a prior is here: `load(source, labels)` for one, and
`Priors` for a run, which loads each source once (a run's label modes, mean
teacher, location input and evaluations share it). A source is
`SYNTHETIC_TRUTH` (the synthetic corpus's true ranges), a range-model
workdir or saved folder, or a SINR `.pt` file (`range_model.load`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from absl import logging
import numpy as np

from inatsounds_jax import registry
from inatsounds_jax import sphere
from inatsounds_jax import storage
from inatsounds_jax.geo import range_model as range_lib

# The synthetic corpus's true ranges (`species_ranges.json` beside its
# records) as a prior source.
SYNTHETIC_TRUTH = "synthetic_truth"

# presence(lat [n], lon [n]) -> probability [n, num_range_species].
PresenceFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


class GeoPrior:
  """Presence probabilities and masks over a classifier's label list."""

  def __init__(self, presence: PresenceFn, range_species: Sequence[str],
               label_names: Sequence[str]):
    self._presence = presence
    self.range_species = list(range_species)
    index = {name: i for i, name in enumerate(self.range_species)}
    self.label_names = list(label_names)
    # Column of each label in the range model, -1 where it is not covered.
    self._column = np.array([index.get(n, -1) for n in self.label_names],
                            np.int64)
    self.covered = self._column >= 0

  def coverage(self, examples: int = 5) -> str:
    """One line: covered / total labels, and up to `examples` labels not."""
    total, covered = len(self.label_names), int(self.covered.sum())
    line = (f"geo prior covers {covered}/{total} labels "
            f"({covered / max(total, 1):.0%})")
    unmatched = [n for n, c in zip(self.label_names, self.covered) if not c]
    if unmatched:
      line += (f"; not covered: {', '.join(unmatched[:examples])}"
               f"{' ...' if len(unmatched) > examples else ''}")
    return line

  def check_coverage(self, min_fraction: float = 0.5) -> str:
    """Refuses a prior that covers no label; warns below `min_fraction`.

    Labels and range-model species are matched by exact species name, so a
    range model trained on other names (another taxonomy version, common
    names) silently covers nothing; this check makes that loud.

    Returns:
      The one-line `coverage()` summary.

    Raises:
      ValueError: no label is covered (the message shows names from both
        lists so the mismatch can be seen).
    """
    summary = self.coverage()
    covered = int(self.covered.sum())
    if covered == 0:
      raise ValueError(
          f"{summary}: the range model's {len(self.range_species)} species "
          f"(e.g. {self.range_species[:3]}) match none of the classifier's "
          f"{len(self.label_names)} labels (e.g. {self.label_names[:3]}); "
          "species are matched by exact name")
    if covered < min_fraction * len(self.label_names):
      logging.warning("%s, below the minimum of %.0f%%: uncovered species are "
                      "never masked", summary, 100 * min_fraction)
    return summary

  def probabilities(self, lat, lon) -> np.ndarray:
    """`[n, labels]` presence; NaN where unknown (no location, not covered)."""
    lat = np.asarray(lat, np.float64).reshape(-1)
    lon = np.asarray(lon, np.float64).reshape(-1)
    out = np.full((len(lat), len(self.label_names)), np.nan)
    known = np.isfinite(lat) & np.isfinite(lon)
    if known.any() and self.covered.any():
      presence = np.asarray(self._presence(lat[known], lon[known]))
      rows = out[known]
      rows[:, self.covered] = presence[:, self._column[self.covered]]
      out[known] = rows
    return out

  def mask(self, lat, lon, threshold: float = 0.1) -> np.ndarray:
    """`[n, labels]` bool: True for species that stay."""
    p = self.probabilities(lat, lon)
    return ~(p < threshold)  # NaN (unknown) compares False: kept.

  def weights(self, lat, lon) -> np.ndarray:
    """Soft mode: multiply probabilities by these (1 where unknown)."""
    p = self.probabilities(lat, lon)
    return np.where(np.isnan(p), 1.0, p)


def from_range_circles(path: str, label_names: Sequence[str]) -> GeoPrior:
  """The synthetic corpus's true ranges (`species_ranges.json`) as a prior.

  Presence is 1 inside a species' range circles and 0 outside.
  """
  species = storage.read_json(path)
  names = [s["name"] for s in species]

  def presence(lat, lon):
    return np.stack([sphere.in_range(s["ranges"], lat, lon)
                     for s in species], axis=1).astype(np.float64)

  return GeoPrior(presence, names, label_names)


def from_range_model(model: range_lib.RangeModel,
                     label_names: Sequence[str]) -> GeoPrior:
  """A trained range model's presence over a classifier's labels."""
  return GeoPrior(model.presence, model.species_names, label_names)


def lowest_logit_mask(logits: np.ndarray, keep: np.ndarray) -> np.ndarray:
  """iNatSounds paper, s.5.1: species outside the range get the lowest logit."""
  return np.where(keep, logits, logits.min(axis=-1, keepdims=True))




def load(source: str, label_names: Sequence[str],
         true_ranges_path: str | None = None) -> GeoPrior:
  """The prior `source` over `label_names` (see the module docstring).

  `true_ranges_path` is the synthetic corpus's `species_ranges.json`, which
  `SYNTHETIC_TRUTH` needs (`data.true_ranges_path`; None where the dataset
  has none).

  Raises:
    registry.ConfigError: `SYNTHETIC_TRUTH` without true ranges.
    OSError, ValueError: a range model that cannot be read.
  """
  if source == SYNTHETIC_TRUTH:
    if true_ranges_path is None:
      raise registry.ConfigError(
          f"geo_prior {SYNTHETIC_TRUTH!r} needs the synthetic corpus's true "
          "ranges next to its records; this dataset has none (give a range "
          "model instead)")
    return from_range_circles(true_ranges_path, label_names)
  return from_range_model(range_lib.load(source), label_names)


class Priors:
  """A run's priors over its labels, each source loaded once.

  Built once when a run is set up and passed to everything that applies a
  prior, so two consumers of one source share one model.
  """

  def __init__(self, label_names: Sequence[str],
               true_ranges_path: str | None = None):
    self.label_names = tuple(label_names)
    self.true_ranges_path = true_ranges_path
    self._loaded: dict[str, GeoPrior] = {}

  def __call__(self, source: str, min_coverage: float = 0.5
               ) -> GeoPrior | None:
    """The prior `source` ("" : None), its coverage checked.

    Raises:
      registry.ConfigError: `source` cannot be loaded or covers no label.
    """
    if not source:
      return None
    if source not in self._loaded:
      self._loaded[source] = load(source, self.label_names,
                                  self.true_ranges_path)
    prior = self._loaded[source]
    try:
      logging.info("Geographic prior %s: %s", source,
                   prior.check_coverage(min_coverage))
    except ValueError as e:  # It covers no label.
      raise registry.ConfigError(f"geo_prior {source}: {e}") from None
    return prior
