"""Range model quality on known ranges, and training time at full scale.

    python benchmarks/geo_prior.py [--epochs 100 --full-scale-epochs 2]

1. Quality: observations drawn like the synthetic corpus's train split (50
   species; range circles on several continents; 60% of each species'
   recordings), scored on 20,000 points spread evenly over the sphere
   against the true ranges. SINR (this library) against the simple filter
   many tools use: "observed within R km of here" (score = minus the
   distance to the nearest training observation; kept = within R).
2. Speed: SINR training at the real release's scale (137,012 observations,
   5,569 species, batch 2048), seconds per epoch on this machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from inatsounds_jax import synthetic
from inatsounds_jax.geo import range_model as range_lib
from inatsounds_jax import sphere


def synthetic_observations(seed: int = 0):
  config = synthetic.CorpusConfig(seed=seed)
  rng = np.random.default_rng(seed)
  species = synthetic.make_species(config, rng)
  specs = [s for s in synthetic.make_recording_specs(config, species, rng)
           if s["split"] == "train"]
  lat = [np.nan if s["latitude"] is None else s["latitude"] for s in specs]
  lon = [np.nan if s["longitude"] is None else s["longitude"] for s in specs]
  return range_lib.Observations(lat, lon, [s["category_id"] for s in specs],
                                [s["name"] for s in species]), species


def nearest_observation_km(obs: range_lib.Observations, lat, lon):
  """`[points, species]` great-circle distance to the nearest observation."""
  obs = obs.located()
  out = np.full((len(lat), len(obs.species_names)), np.inf)
  p_lat, p_lon = np.radians(lat)[:, None], np.radians(lon)[:, None]
  for c in range(len(obs.species_names)):
    o_lat = np.radians(obs.latitude[obs.species == c])[None]
    o_lon = np.radians(obs.longitude[obs.species == c])[None]
    if o_lat.size:
      cos = (np.sin(p_lat) * np.sin(o_lat) +
             np.cos(p_lat) * np.cos(o_lat) * np.cos(p_lon - o_lon))
      out[:, c] = 6371.0 * np.arccos(np.clip(cos, -1, 1)).min(axis=1)
  return out


def quality_table(epochs: int) -> list[tuple]:
  obs, species = synthetic_observations()
  lat, lon = range_lib.sphere_points(20_000)
  truth = np.stack([sphere.in_range(s["ranges"], lat, lon)
                    for s in species], axis=1)
  rows = []
  start = time.perf_counter()
  model = range_lib.train(obs, epochs=epochs, batch_size=256,
                          learning_rate=2e-3)
  seconds = time.perf_counter() - start
  rows.append((f"SINR, {epochs} epochs ({seconds:.0f} s)",
               range_lib.quality(model.presence(lat, lon), truth, 0.1)))
  distance = nearest_observation_km(obs, lat, lon)
  for radius in (500, 1000, 2000):
    # Scores rank by distance; "kept" means within the radius.
    score = np.where(distance <= radius, 1.0, 0.0) + 1.0 / (1.0 + distance)
    rows.append((f"observed within {radius} km",
                 range_lib.quality(score, truth, threshold=1.0)))
  print(f"\n{len(obs.located().species)} located observations of "
        f"{len(species)} species; true range covers "
        f"{truth.mean():.1%} of the sphere per species on average")
  print(f"{'method':32s} {'mAP':>6s} {'kept':>6s} {'masked outside':>15s}")
  for name, q in rows:
    print(f"{name:32s} {q['map']:6.3f} {q['kept']:6.3f} "
          f"{q['masked_outside']:15.3f}")
  return rows


def full_scale_speed(epochs: int) -> None:
  rng = np.random.default_rng(0)
  n, c = 137_012, 5_569
  obs = range_lib.Observations(
      rng.uniform(-60, 70, n), rng.uniform(-180, 180, n),
      rng.integers(0, c, n), [str(i) for i in range(c)])
  start = time.perf_counter()
  range_lib.train(obs, epochs=epochs)
  seconds = (time.perf_counter() - start) / epochs
  print(f"\nfull scale ({n} observations, {c} species, batch 2048): "
        f"{seconds:.1f} s per epoch incl. compile; 20 epochs ~ "
        f"{20 * seconds / 60:.1f} min")


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--epochs", type=int, default=100)
  parser.add_argument("--full-scale-epochs", type=int, default=2)
  args = parser.parse_args()
  print(f"{platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs")
  quality_table(args.epochs)
  if args.full_scale_epochs:
    full_scale_speed(args.full_scale_epochs)


if __name__ == "__main__":
  main()
