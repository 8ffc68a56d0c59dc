"""Plain sphere geometry: species ranges as unions of circles.

A range is a list of circles `{"lat": deg, "lon": deg, "radius_km": km}`; a
point is inside when it lies within any circle (great-circle distance on a
sphere of radius `EARTH_RADIUS_KM`). The synthetic corpus draws its species'
ranges and recording locations this way and writes them to its
`species_ranges.json`; `geo.prior.from_range_circles` turns that file into a
`GeoPrior`. Numpy only, so the corpus generator uses it without the
geographic-prior package (which trains and loads range models).
"""

from __future__ import annotations

import math

import numpy as np

EARTH_RADIUS_KM = 6371.0


def angular_distance(lat1, lon1, lat2, lon2) -> np.ndarray:
  """Great-circle distance in radians between points in degrees (broadcast)."""
  p1, p2 = np.radians(lat1), np.radians(lat2)
  dl = np.radians(np.asarray(lon2) - np.asarray(lon1))
  c = np.sin(p1) * np.sin(p2) + np.cos(p1) * np.cos(p2) * np.cos(dl)
  return np.arccos(np.clip(c, -1.0, 1.0))


def in_range(ranges: list[dict], lat, lon) -> np.ndarray:
  """bool, shaped like `lat` and `lon` broadcast: inside any of the circles."""
  lat, lon = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
  inside = np.zeros(np.broadcast(lat, lon).shape, bool)
  for r in ranges:
    d = angular_distance(r["lat"], r["lon"], lat, lon)
    inside |= d <= r["radius_km"] / EARTH_RADIUS_KM
  return inside


def random_point_in_range(ranges: list[dict], rng: np.random.Generator
                          ) -> tuple[float, float]:
  """(lat, lon), rounded to 5 decimals: uniform over one random circle's cap."""
  r = ranges[rng.integers(len(ranges))]
  radius = r["radius_km"] / EARTH_RADIUS_KM
  dist = np.arccos(1 - rng.uniform() * (1 - math.cos(radius)))
  bearing = rng.uniform(0, 2 * math.pi)
  lat1, lon1 = math.radians(r["lat"]), math.radians(r["lon"])
  lat2 = math.asin(math.sin(lat1) * math.cos(dist) +
                   math.cos(lat1) * math.sin(dist) * math.cos(bearing))
  lon2 = lon1 + math.atan2(
      math.sin(bearing) * math.sin(dist) * math.cos(lat1),
      math.cos(dist) - math.sin(lat1) * math.sin(lat2))
  lon2 = (math.degrees(lon2) + 540) % 360 - 180
  return round(math.degrees(lat2), 5), round(lon2, 5)


def location_problem(latitude: float, longitude: float) -> str | None:
  """Why (latitude, longitude) is not a place on Earth (out of range, NaN),
  or None: the one check of every location a command is given."""
  if -90 <= latitude <= 90 and -180 <= longitude <= 180:
    return None
  return (f"({latitude}, {longitude}) is outside latitude -90..90, "
          "longitude -180..180")
