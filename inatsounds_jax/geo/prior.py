"""`GeoPrior`: a range model's presence, matched to a classifier's labels.

A range model covers its own species list; a classifier has another. The two
are matched by species name, never by index. Rules the users asked for:
missing coordinates mask nothing; species the range model does not cover are
never masked; the prior's probability can be reported instead of applied.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from absl import logging
import numpy as np

from inatsounds_jax import storage
from inatsounds_jax.geo import ranges as ranges_lib

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
    return np.stack([ranges_lib.in_range(s["ranges"], lat, lon)
                     for s in species], axis=1).astype(np.float64)

  return GeoPrior(presence, names, label_names)


def lowest_logit_mask(logits: np.ndarray, keep: np.ndarray) -> np.ndarray:
  """iNatSounds paper, s.5.1: species outside the range get the lowest logit."""
  return np.where(keep, logits, logits.min(axis=-1, keepdims=True))


