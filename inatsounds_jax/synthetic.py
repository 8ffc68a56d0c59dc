"""A synthetic corpus laid out exactly like the iNatSounds release.

    python -m inatsounds_jax.synthetic --out DIR [--num_species 50 --seed 0]
    python -m inatsounds_jax.synthetic --out DIR --soundscapes N \\
        [--soundscape_seconds 60 --soundscape_seed 0 --soundscape_codes]

writes `train/`, `val/`, `test/` folders of `<category dir>/<recording>.wav`
(mono 16-bit PCM, 22,050 Hz), `train.json` / `val.json` / `test.json` in the
official schema, the archives the release ships (`train.tar.gz`,
`val.tar.gz`, `public_test.tar.gz`, `*.json.tar.gz`), and two files the
release does not have: `strong_labels.json` (every species audible in every
recording, with time spans, and the recordist's checklist) and
`species_ranges.json` (each species' true range), so that single-positive
methods and range models can be measured against the truth.

It never deletes or overwrites a file it did not write: it lists what it
writes in `.synthetic_manifest.json`, reuses a complete generation with the
same config, replaces only its own files when the config differs, and
refuses a folder holding anything else, naming the files.

What makes learning on it mean something:
- species in the release's five supercategories in roughly its proportions,
  with a call family each (FM whistles and trills for birds, broadband buzz for
  insects, pulsed harmonic calls for frogs, low harmonic calls for mammals,
  click trains for reptiles), per-species parameters and variation within the
  species;
- look-alike pairs (same genus, nearly the same call) that live on different
  continents, so only location tells them apart; other species share ranges;
- background noise of several kinds and signal-to-noise ratios, other species
  calling in the background (weak labels), silent stretches;
- long-tailed species counts, durations from 1 s to minutes (or drawn like
  the release's, mean 31.5 s: --duration_distribution=release, for
  measuring input speed at scale), locations drawn from the species'
  ranges (some missing), dates by split year, and val/test species a subset
  of the train species.

A harder world, for ranking methods rather than for a quick start, is a
set of options, all off by default (`CorpusConfig.hard`, the command's
--world=hard): several call types per species and individual variation;
look-alikes sharing a range; species on one continent, so that about half
of a recording's other species are still unknown after the geographic
prior, as in the Merlin L48 study; dense choruses of the place's species;
callers at a distance (level and low-pass) in reverberant habitat; rain,
wind gusts and engines over the steady noise.
`benchmarks/synthetic_realism.py` sets its listening-level statistics
beside real recordings'.

With --soundscapes N it writes, instead of the corpus, N long field
recordings of several of the corpus's species (the same --seed and
--num_species give the same species and calls) with one Raven selection
table each and a species-map CSV (`write_soundscapes`), the layout
`python -m inatsounds_jax.evaluate --audio=DIR/soundscapes
--annotations=DIR/soundscape_annotations [--species_map=...]` reads, so
soundscape evaluation runs on data with exactly known events.

Deterministic for a seed: the same arguments give byte-identical files.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import math
import multiprocessing
import os
import tarfile
import time

import numpy as np
import scipy.fft
import scipy.signal

from inatsounds_jax import audio as audio_lib
from inatsounds_jax import registry
from inatsounds_jax import release
from inatsounds_jax import sphere
from inatsounds_jax import storage

SR = audio_lib.SAMPLE_RATE
# Random streams beside the main one, keyed `(seed, index, stream)`: each
# option of the harder world draws from them only when on, so the main
# stream, and the default corpus, stay as they were (`make_checklist`'s
# stream is 1).
_CHORUS_STREAM = 3  # Index: the spec's, in the order specs are made.
_SOUND_WORLD_STREAM = 4  # Index: the recording's audio_id.
_SPECIES_WORLD_STREAM = 5  # Index: 0.
_DURATION_STREAM = 6  # Index: the spec's, in the order specs are made.
# What the generator wrote (relative paths) and with which config; it never
# deletes or overwrites a file that is not listed there.
MANIFEST = ".synthetic_manifest.json"
# Dataset split -> years its recordings' dates are drawn from.
SPLIT_YEARS = {"train": (2015, 2021), "validation": (2022, 2022),
               "test": (2023, 2023)}
# (supercategory, share of the release's species, phylum, class, orders,
#  call families, common-name nouns). Shares follow the dataset README.
SUPERCATEGORIES = (
    ("Aves", 3846, "Chordata", "Aves",
     ("Passeriformes", "Piciformes", "Strigiformes", "Charadriiformes"),
     ("whistle", "trill"), ("Warbler", "Thrush", "Wren", "Finch", "Vireo",
                            "Owl", "Sandpiper", "Woodpecker", "Tanager")),
    ("Insecta", 745, "Arthropoda", "Insecta", ("Orthoptera", "Hemiptera"),
     ("buzz",), ("Katydid", "Cricket", "Cicada", "Conehead")),
    ("Amphibia", 650, "Chordata", "Amphibia", ("Anura",),
     ("pulsed_harmonic",), ("Treefrog", "Toad", "Chorus Frog", "Peeper")),
    ("Mammalia", 296, "Chordata", "Mammalia",
     ("Rodentia", "Carnivora", "Artiodactyla"),
     ("low_harmonic",), ("Squirrel", "Fox", "Deer", "Pika")),
    ("Reptilia", 32, "Chordata", "Reptilia", ("Squamata",),
     ("click_train",), ("Gecko",)),
)
# Rough continents: species ranges cluster in these, so species of one realm
# overlap and look-alike partners are put in different realms.
REALMS = ((42, -100), (-12, -60), (50, 12), (2, 22), (35, 100), (-25, 135))
_SYLLABLES = ("ca", "lo", "phi", "ra", "ne", "tur", "mi", "sy", "vi", "do",
              "pte", "an", "chro", "me", "la", "ti", "go", "zo", "ber", "hy")
_ADJECTIVES = ("Pale", "Dusky", "Lesser", "Greater", "Spotted", "Rufous",
               "Olive", "Northern", "Southern", "Striped", "Crested", "Ashy",
               "Golden", "Little", "Common", "Mountain", "Marsh", "Forest")
# Individual variation beyond this would let a parameter's factor reach 0.
_MAX_INDIVIDUAL_VARIATION = 0.3
# The distance (m) every caller has when distance is off, and the nearest.
_NEAR_M = 10.0
# Habitat excess attenuation, dB per kHz per 100 m: foliage and air absorb
# high frequencies first (Morton 1975's forest figures are of this order).
_EXCESS_DB_PER_KHZ_100M = 1.5
# `CorpusConfig.duration_distribution="release"`: log-normal durations
# with the release's mean, 1,200 h over 137,012 train recordings = 31.5 s
# (Chasmai et al. 2025; the mean with max_duration_s=600), and its long
# tail (1 in 8 over a minute); the shape is an assumption, the release
# publishes only the total.
_RELEASE_MEDIAN_DURATION_S = 19.1
_RELEASE_DURATION_SIGMA = 1.0
DURATION_DISTRIBUTIONS = ("default", "release")
# `CorpusConfig.hard`'s fields (the command's --world=hard).
HARD_WORLD = dict(
    num_species=120, num_recordings=3000, num_realms=1,
    lookalike_pair_fraction=0.4, lookalike_shared_range_fraction=0.5,
    call_types_per_species=3, individual_variation=0.08, chorus_density=3.0,
    max_distance_m=200.0, reverb_prob=0.5, rain_prob=0.2, wind_gust_prob=0.3,
    engine_prob=0.2, checklist_site_species=0.4)
# The command's --world: fields its flags default to.
WORLDS = {"default": {}, "hard": HARD_WORLD}


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
  """What to generate. The defaults make about 2,000 recordings."""
  num_species: int = 50
  num_recordings: int = 2000
  seed: int = 0
  median_duration_s: float = 3.5
  max_duration_s: float = 240.0
  long_recording_fraction: float = 0.01  # Drawn from 1 to 4 minutes.
  lookalike_pair_fraction: float = 0.3  # Of species, in look-alike pairs.
  missing_location_fraction: float = 0.08
  background_species_prob: float = 0.35
  silent_stretch_prob: float = 0.3
  val_test_species_fraction: float = 0.8
  split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
  # Checklists (`make_checklist`): background callers left off, and other
  # species of the site put on.
  checklist_omission: float = 0.15
  checklist_site_species: float = 0.25
  key_style: str = "audio"  # "audio": audio_id/audio_dir_name; or "image".
  archives: bool = True
  # The harder world (`hard`); each off by default, and the defaults give
  # the corpus made before these existed, byte for byte.
  # Species live in the first `num_realms` of `REALMS` (realm draws folded
  # onto them; look-alike partners may then share one); 1 is one continent
  # like the Merlin L48 study's contiguous United States.
  num_realms: int = len(REALMS)
  # Call types per species (songs and calls), of its supercategory's
  # families; each call of a recording is one of them.
  call_types_per_species: int = 1
  # Relative spread (standard deviation) of each individual's call
  # parameters around its species', drawn per recording and caller.
  individual_variation: float = 0.0
  # Of look-alike pairs: the share whose second member lives where the
  # first does (overlapping range circles), so location cannot part them.
  lookalike_shared_range_fraction: float = 0.0
  # Mean number (Poisson) of chorus species per recording: species of the
  # place calling all through it, below the target.
  chorus_density: float = 0.0
  # Callers stand 10 m to this far away (log-uniform; 0: all at 10 m):
  # spreading loss and habitat low-pass (`_propagate`).
  max_distance_m: float = 0.0
  # Per recording: the calls reverberate (a decaying noise impulse
  # response), and non-stationary noises join the background.
  reverb_prob: float = 0.0
  rain_prob: float = 0.0
  wind_gust_prob: float = 0.0
  engine_prob: float = 0.0
  # "release": durations drawn like the release's (mean 31.5 s, a tail of
  # minutes up to `max_duration_s`; give 600 for the release's mean),
  # instead of `median_duration_s` and `long_recording_fraction`, so that
  # input speed is measured on realistic lengths.
  duration_distribution: str = "default"

  @classmethod
  def hard(cls, **overrides) -> "CorpusConfig":
    """The harder world: 120 species on one continent (like the L48
    study's), three call types each and individual variation, look-alikes
    half of them sharing a range, dense choruses, distant and reverberant
    callers, rain, wind gusts and engines, and checklists listing more of
    the place's species (`HARD_WORLD`). `overrides` are fields."""
    return cls(**{**HARD_WORLD, **overrides})

  def __post_init__(self):
    """Raises `registry.ConfigError` naming the field (`field=value`) and
    the least it must be."""
    bounds = {"num_realms": (1, len(REALMS)),
              "call_types_per_species": (1, math.inf),
              "individual_variation": (0.0, _MAX_INDIVIDUAL_VARIATION),
              "chorus_density": (0.0, math.inf)}
    bounds.update((name, (0.0, 1.0)) for name in (
        "lookalike_shared_range_fraction", "reverb_prob", "rain_prob",
        "wind_gust_prob", "engine_prob"))
    for name, (low, high) in bounds.items():
      value = getattr(self, name)
      if not low <= value <= high:
        raise registry.ConfigError(
            f"{name}={value}: give " + (f"at least {low}" if high == math.inf
                                        else f"{low} to {high}"))
    if self.max_distance_m and self.max_distance_m < _NEAR_M:
      raise registry.ConfigError(
          f"max_distance_m={self.max_distance_m}: give 0 (off) or at least "
          f"{_NEAR_M:g}")
    if self.num_species < 2:
      raise registry.ConfigError(
          f"num_species={self.num_species} is too few: give at least 2")
    if self.num_recordings < 3 * self.num_species:
      raise registry.ConfigError(
          f"num_recordings={self.num_recordings} is too few for "
          f"num_species={self.num_species}: give at least "
          f"{3 * self.num_species} (3 per species, so that every split has "
          "data), or fewer species")
    if self.duration_distribution not in DURATION_DISTRIBUTIONS:
      raise registry.ConfigError(
          f"duration_distribution={self.duration_distribution!r}: give one "
          f"of {', '.join(DURATION_DISTRIBUTIONS)}")
    if self.key_style not in ("audio", "image"):
      raise registry.ConfigError(
          f"key_style={self.key_style!r}: give 'audio' or 'image'")


# ---------------------------------------------------------------------------
# Species: taxonomy, call parameters, ranges.
# ---------------------------------------------------------------------------

def _allocate(total: int, weights) -> list[int]:
  """Largest-remainder split of `total` by `weights`, at least 1 each."""
  weights = np.asarray(weights, np.float64)
  k = len(weights)
  if total < k:
    return [1 if i < total else 0 for i in range(k)]
  raw = (total - k) * weights / weights.sum()
  counts = np.floor(raw).astype(int)
  order = np.argsort(-(raw - counts), kind="stable")
  counts[order[:total - k - counts.sum()]] += 1
  return list(counts + 1)


def _call_params(family: str, rng: np.random.Generator) -> dict[str, float]:
  u = rng.uniform
  if family == "whistle":
    return dict(f0=u(1500, 7000), sweep=u(-2000, 2000), fm_rate=u(0, 30),
                fm_depth=u(0, 600), note_dur=u(0.12, 0.45),
                notes=float(rng.integers(1, 5)), note_gap=u(0.04, 0.2),
                harmonic2=u(0, 0.3), interval=u(0.4, 2.5))
  if family == "trill":
    return dict(f0=u(2000, 8000), note_dur=u(0.015, 0.045),
                note_rate=u(8, 28), notes=float(rng.integers(6, 25)),
                sweep=u(-3000, 1000), slope=u(-0.8, 0.8), interval=u(0.5, 3))
  if family == "buzz":
    return dict(fc=u(3500, 9500), bandwidth=u(300, 2500),
                pulse_rate=u(15, 200), duty=u(0.2, 0.8),
                call_dur=u(0.5, 3.0), interval=u(0.2, 2))
  if family == "pulsed_harmonic":
    rate = u(4, 60)
    return dict(f0=u(250, 1800), harmonics=float(rng.integers(2, 7)),
                decay=u(0.3, 0.8), pulse_rate=rate,
                pulse_dur=u(0.3, 0.8) / rate, call_dur=u(0.2, 1.5),
                interval=u(0.5, 3))
  if family == "low_harmonic":
    return dict(f0=u(80, 600), harmonics=float(rng.integers(3, 9)),
                fm_depth=u(0, 0.3), fm_rate=u(0.5, 4), call_dur=u(0.4, 2.0),
                interval=u(1, 4))
  if family == "click_train":
    return dict(f0=u(1000, 4000), clicks=float(rng.integers(3, 11)),
                click_rate=u(3, 12), click_dur=u(0.01, 0.03),
                interval=u(1, 4))
  raise ValueError(f"unknown call family {family!r}")


def _latin_word(rng: np.random.Generator, syllables: int) -> str:
  return "".join(rng.choice(_SYLLABLES, size=syllables))


def _ranges_in_realm(realm: int, rng: np.random.Generator) -> list[dict]:
  lat0, lon0 = REALMS[realm]
  return [dict(lat=float(np.clip(lat0 + rng.uniform(-15, 15), -70, 75)),
               lon=float((lon0 + rng.uniform(-25, 25) + 540) % 360 - 180),
               radius_km=float(rng.uniform(800, 2500)))
          for _ in range(int(rng.integers(1, 3)))]


def make_species(config: CorpusConfig, rng: np.random.Generator) -> list[dict]:
  """Species with taxonomy, call family, call parameters and range."""
  counts = _allocate(config.num_species, [s[1] for s in SUPERCATEGORIES])
  species = []
  names = set()
  for (supercat, _, phylum, cls, orders, families, nouns), n in zip(
      SUPERCATEGORIES, counts):
    members = []
    for _ in range(n):
      while True:
        genus = _latin_word(rng, 3).capitalize()
        epithet = _latin_word(rng, 2) + rng.choice(("us", "a", "is", "ii"))
        if f"{genus} {epithet}" not in names:
          break
      order = str(rng.choice(orders))
      family = str(rng.choice(families))
      members.append(dict(
          supercategory=supercat, phylum=phylum, cls=cls, order=order,
          family_name=_latin_word(rng, 2).capitalize() + "idae",
          genus=genus, epithet=epithet, call_family=family,
          params=_call_params(family, rng),
          realm=int(rng.integers(len(REALMS))) % config.num_realms,
          common_name=f"{rng.choice(_ADJECTIVES)} {rng.choice(nouns)}"))
      names.add(f"{genus} {epithet}")
    # Look-alike pairs: the second member copies the first's genus, family and
    # call (2% apart) but lives in another realm.
    num_pairs = int(round(len(members) * config.lookalike_pair_fraction / 2))
    for i in range(num_pairs):
      a, b = members[2 * i], members[2 * i + 1]
      b.update(order=a["order"], family_name=a["family_name"],
               genus=a["genus"], call_family=a["call_family"],
               lookalike_of=2 * i)
      b["params"] = _lookalike_params(a["params"], rng)
      b["realm"] = int((a["realm"] + rng.integers(2, len(REALMS) - 1))
                       % len(REALMS)) % config.num_realms
      while f"{b['genus']} {b['epithet']}" in names:
        b["epithet"] = _latin_word(rng, 2) + "oides"
      names.add(f"{b['genus']} {b['epithet']}")
    species.extend(members)
  for cid, s in enumerate(species):
    s["id"] = cid
    s["name"] = f"{s['genus']} {s['epithet']}"
    s["ranges"] = _ranges_in_realm(s["realm"], rng)
    s["dir_name"] = "_".join([f"{cid:05d}", "Animalia", s["phylum"], s["cls"],
                              s["order"], s["family_name"], s["genus"],
                              s["epithet"]])
  for s in species:
    if "lookalike_of" in s:
      first_of_group = next(t for t in species
                            if t["supercategory"] == s["supercategory"])
      s["lookalike_of"] = first_of_group["id"] + s["lookalike_of"]
  _add_call_types_and_shared_ranges(config, species)
  return species


def _add_call_types_and_shared_ranges(config: CorpusConfig,
                                      species: list[dict]) -> None:
  """Gives every species its `call_types` (`(family, params)` pairs, the
  first its own call) and moves the ranges of
  `lookalike_shared_range_fraction` of look-alike partners onto their
  first member's.

  Drawn from a stream of their own, so that with both options off the
  species are the ones made before the options existed. A look-alike's
  extra call types are its partner's, 2% apart, like its own call.
  """
  rng = np.random.default_rng((config.seed, 0, _SPECIES_WORLD_STREAM))
  families = {s[0]: s[5] for s in SUPERCATEGORIES}
  for s in species:
    s["call_types"] = [(s["call_family"], s["params"])]
    if "lookalike_of" in s:
      partner = species[s["lookalike_of"]]
      s["call_types"] += [(family, _lookalike_params(params, rng))
                          for family, params in partner["call_types"][1:]]
      if rng.uniform() < config.lookalike_shared_range_fraction:
        s["realm"] = partner["realm"]
        s["ranges"] = [_overlapping_circle(r, rng) for r in partner["ranges"]]
    else:
      for _ in range(config.call_types_per_species - 1):
        family = str(rng.choice(families[s["supercategory"]]))
        s["call_types"].append((family, _call_params(family, rng)))


def _lookalike_params(params: dict[str, float], rng: np.random.Generator
                      ) -> dict[str, float]:
  """A look-alike's version of a call: each parameter 2% off, counts kept."""
  return {k: v * (1.0 + 0.02 * rng.choice((-1, 1)))
          if k not in ("notes", "harmonics", "clicks") else v
          for k, v in params.items()}


def _overlapping_circle(circle: dict, rng: np.random.Generator) -> dict:
  """A range circle around `circle`: its centre within a third of the
  radius, its radius 0.8 to 1.2 times, so the two overlap widely."""
  lat, lon = sphere.random_point_in_range(
      [dict(circle, radius_km=circle["radius_km"] / 3)], rng)
  return dict(lat=lat, lon=lon,
              radius_km=float(circle["radius_km"] * rng.uniform(0.8, 1.2)))


# ---------------------------------------------------------------------------
# Sound synthesis.
# ---------------------------------------------------------------------------

def _envelope(n: int) -> np.ndarray:
  return np.sin(np.linspace(0.0, np.pi, n)) ** 2 if n > 1 else np.ones(n)


def _tone(freq: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  phase = 2 * np.pi * np.cumsum(freq) / SR + rng.uniform(0, 2 * np.pi)
  return np.sin(phase)


def synthesize_call(family: str, p: dict, rng: np.random.Generator
                    ) -> np.ndarray:
  """One call (a song, a trill, a buzz) with small variation per call."""

  def j():  # A 2% jitter.
    return 1.0 + 0.02 * rng.standard_normal()

  nyquist_guard = 0.45 * SR
  if family == "whistle":
    parts = []
    for _ in range(int(p["notes"])):
      n = int(p["note_dur"] * j() * SR)
      t = np.arange(n) / SR
      f = (p["f0"] * j() + p["sweep"] * t / max(t[-1], 1e-3) +
           p["fm_depth"] * np.sin(2 * np.pi * p["fm_rate"] * t))
      f = np.clip(f, 200, nyquist_guard)
      note = _tone(f, rng) + p["harmonic2"] * _tone(
          np.minimum(2 * f, nyquist_guard), rng)
      parts += [note * _envelope(n), np.zeros(int(p["note_gap"] * SR))]
    return np.concatenate(parts)
  if family == "trill":
    notes = int(p["notes"])
    period = int(SR / p["note_rate"])
    n_note = int(p["note_dur"] * SR)
    out = np.zeros(notes * period + n_note)
    t = np.arange(n_note) / SR
    for k in range(notes):
      f = np.clip(p["f0"] * j() + p["sweep"] * t / t[-1], 300, nyquist_guard)
      gain = 1.0 + p["slope"] * (k / max(notes - 1, 1) - 0.5)
      out[k * period:k * period + n_note] += gain * _tone(f, rng) * _envelope(
          n_note)
    return out
  if family == "buzz":
    n = int(p["call_dur"] * j() * SR)
    width = max(1, int(SR / p["bandwidth"]))
    noise = rng.standard_normal(n + width)
    smooth = (np.cumsum(noise)[width:] - np.cumsum(noise)[:-width]) / width
    t = np.arange(n) / SR
    band = smooth * np.cos(2 * np.pi * p["fc"] * j() * t)
    pulses = ((t * p["pulse_rate"]) % 1.0) < p["duty"]
    return band * pulses * _envelope(n) ** 0.25
  if family == "pulsed_harmonic":
    n = int(p["call_dur"] * j() * SR)
    t = np.arange(n) / SR
    f0 = p["f0"] * j()
    stack = sum(p["decay"] ** h * np.sin(2 * np.pi * (h + 1) * f0 * t)
                for h in range(int(p["harmonics"]))
                if (h + 1) * f0 < nyquist_guard)
    phase = (t * p["pulse_rate"]) % 1.0
    pulse_frac = min(p["pulse_dur"] * p["pulse_rate"], 0.95)
    pulse_env = np.where(phase < pulse_frac,
                         np.sin(np.pi * phase / pulse_frac) ** 2, 0.0)
    return stack * pulse_env * _envelope(n) ** 0.25
  if family == "low_harmonic":
    n = int(p["call_dur"] * j() * SR)
    t = np.arange(n) / SR
    f0 = p["f0"] * j() * (1 + p["fm_depth"] * np.sin(
        2 * np.pi * p["fm_rate"] * t + rng.uniform(0, 2 * np.pi)))
    phase = 2 * np.pi * np.cumsum(f0) / SR
    stack = sum(np.sin((h + 1) * phase) / (h + 1)
                for h in range(int(p["harmonics"])))
    return stack * _envelope(n)
  if family == "click_train":
    period = int(SR / p["click_rate"])
    n_click = int(p["click_dur"] * SR)
    clicks = int(p["clicks"])
    out = np.zeros(clicks * period + n_click)
    t = np.arange(n_click) / SR
    for k in range(clicks):
      f = p["f0"] * j() * (1.0 - 0.3 * t / t[-1])
      out[k * period:k * period + n_click] += _tone(f, rng) * _envelope(n_click)
    return out
  raise ValueError(f"unknown call family {family!r}")


def _colored_noise(n: int, exponent: float, rng: np.random.Generator
                   ) -> np.ndarray:
  # A fast FFT length, cut back to n: arbitrary lengths can be 10x slower.
  m = scipy.fft.next_fast_len(n, real=True)
  spectrum = scipy.fft.rfft(rng.standard_normal(m))
  freqs = np.maximum(scipy.fft.rfftfreq(m, 1.0 / SR), 20.0)
  spectrum *= freqs ** (-exponent / 2)
  out = scipy.fft.irfft(spectrum, m)[:n]
  return out / (out.std() + 1e-12)


def background_noise(kind: str, n: int, rng: np.random.Generator
                     ) -> np.ndarray:
  """Unit-RMS background of one kind."""
  if kind == "white":
    return rng.standard_normal(n)
  if kind == "pink":
    return _colored_noise(n, 1.0, rng)
  if kind == "brown":
    return _colored_noise(n, 2.0, rng)
  if kind == "wind":
    gusts = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.05, 0.5) *
                               np.arange(n) / SR + rng.uniform(0, 6.3))
    out = _colored_noise(n, 2.5, rng) * gusts
    return out / (out.std() + 1e-12)
  if kind == "rain":
    out = 0.3 * _colored_noise(n, 0.5, rng)
    drops = rng.integers(0, n, size=max(1, int(n / SR * rng.uniform(20, 200))))
    out[drops] += rng.standard_normal(len(drops)) * 8
    return out / (out.std() + 1e-12)
  raise ValueError(f"unknown noise kind {kind!r}")


NOISE_KINDS = ("white", "pink", "brown", "wind", "rain")
# Non-stationary noises the harder world adds over `NOISE_KINDS`'s (each
# with its `CorpusConfig` probability, `<kind>_prob`).
TRANSIENT_NOISE_KINDS = ("rain", "wind_gust", "engine")


def _bumps(n: int, count: int, min_s: float, max_s: float,
           rng: np.random.Generator) -> np.ndarray:
  """`count` smooth bumps (sin^2, `min_s` to `max_s` long, heights 0.5 to
  1.5) at random places: the time course of a gust or a shower."""
  out = np.zeros(n)
  for _ in range(count):
    length = min(n, max(2, int(rng.uniform(min_s, max_s) * SR)))
    start = int(rng.integers(0, n - length + 1))
    out[start:start + length] += rng.uniform(0.5, 1.5) * _envelope(length)
  return out


def transient_noise(kind: str, n: int, rng: np.random.Generator
                    ) -> np.ndarray:
  """Unit-RMS non-stationary noise of one kind (`TRANSIENT_NOISE_KINDS`).

  `rain`: a shower of impulsive drops (1 to 6 ms decaying broadband
  clicks, log-normal sizes) whose rate swells and fades; `wind_gust`:
  low-frequency noise whose level follows gusts of 0.5 to 3 s over a weak
  steady wind; `engine`: a harmonic drone at 25 to 110 Hz whose pitch
  drifts and whose level rises and falls as the vehicle passes. Their
  energy per frame varies far more than `background_noise`'s.
  """
  seconds = n / SR
  if kind == "rain":
    shower = _bumps(n, 1 + int(rng.poisson(seconds / 10)), 2.0, 15.0, rng)
    candidates = rng.integers(0, n, size=max(1, int(seconds * 400)))
    keep = rng.uniform(size=len(candidates)) * shower.max() < shower[
        candidates]
    drops = np.zeros(n)
    np.add.at(drops, candidates[keep],
              rng.lognormal(0.0, 1.0, size=int(keep.sum())))
    click_len = int(rng.uniform(0.001, 0.006) * SR)
    click = rng.standard_normal(click_len) * np.exp(
        -np.arange(click_len) / (click_len / 5))
    out = scipy.signal.fftconvolve(drops, click)[:n]
  elif kind == "wind_gust":
    gusts = 0.1 + _bumps(n, 1 + int(rng.poisson(seconds / 4)), 0.5, 3.0, rng)
    out = _colored_noise(n, 2.5, rng) * gusts
  elif kind == "engine":
    t = np.arange(n) / SR
    f0 = rng.uniform(25, 110) * (1 + 0.1 * np.sin(
        2 * np.pi * t / rng.uniform(5, 20) + rng.uniform(0, 2 * np.pi)))
    phase = 2 * np.pi * np.cumsum(f0) / SR
    drone = sum(np.sin(h * phase + rng.uniform(0, 2 * np.pi)) / h
                for h in range(1, 13))
    passing = 0.15 + np.exp(-0.5 * ((t - rng.uniform(0, seconds))
                                    / rng.uniform(1.0, 6.0)) ** 2)
    out = (drone + 0.3 * _colored_noise(n, 2.0, rng)) * passing
  else:
    raise ValueError(f"unknown transient noise kind {kind!r}")
  return out / (math.sqrt(np.mean(out ** 2)) + 1e-12)


def _individual(call_types: list[tuple[str, dict]], variation: float,
                rng: np.random.Generator) -> list[tuple[str, dict]]:
  """One individual's versions of its species' call types: each parameter
  times `1 + variation * z` (z standard normal, within +-2.5, so a factor
  stays positive up to `_MAX_INDIVIDUAL_VARIATION`); counts kept, duty
  cycles and harmonic decays kept below 1."""
  if not variation:
    return call_types
  voice = []
  for family, params in call_types:
    varied = {}
    for k, v in params.items():
      if k not in ("notes", "harmonics", "clicks"):
        v *= 1.0 + variation * float(np.clip(rng.standard_normal(), -2.5,
                                             2.5))
      varied[k] = min(v, 0.95) if k in ("duty", "decay") else v
    voice.append((family, varied))
  return voice


def _room_response(reverb_prob: float, rng: np.random.Generator
                   ) -> np.ndarray | None:
  """With probability `reverb_prob`, a room's impulse response: the direct
  sound (1) and exponentially decaying noise (reverberation time 0.3 to
  1.5 s, as under a forest canopy) 0.2 to 0.7 of its energy; else None."""
  if not rng.uniform() < reverb_prob:
    return None
  rt60 = rng.uniform(0.3, 1.5)
  t = np.arange(int(rt60 * SR)) / SR
  tail = rng.standard_normal(len(t)) * np.exp(-6.91 * t / rt60)
  tail *= math.sqrt(rng.uniform(0.2, 0.7) / np.sum(tail ** 2))
  tail[0] = 1.0
  return tail


def _propagate(signal: np.ndarray, distance_m: float,
               room: np.ndarray | None) -> np.ndarray:
  """A caller's signal as heard `distance_m` away in `room`.

  Beyond `_NEAR_M`, habitat excess attenuation takes
  `_EXCESS_DB_PER_KHZ_100M` dB per kHz per 100 m (a low-pass that deepens
  with distance); the level (spreading loss) is the caller's (its draw in
  `synthesize_recording`). `room` (an impulse response) adds its echo,
  cut at the recording's end. Both are one filter, applied in one FFT;
  the signal itself when neither applies.
  """
  if distance_m <= _NEAR_M and room is None:
    return signal
  n = len(signal)
  m = scipy.fft.next_fast_len(n + (0 if room is None else len(room)),
                              real=True)
  excess_db = (_EXCESS_DB_PER_KHZ_100M * scipy.fft.rfftfreq(m, 1.0 / SR)
               / 1000 * max(distance_m - _NEAR_M, 0.0) / 100)
  response = 10 ** (-excess_db / 20)
  if room is not None:
    response = response * scipy.fft.rfft(room, m)
  return scipy.fft.irfft(scipy.fft.rfft(signal, m) * response, m)[:n]


def _call_type(voice: list[tuple[str, dict]], rng: np.random.Generator
               ) -> tuple[str, dict]:
  """One of a caller's call types, drawn only when it has several (so that
  a single type leaves `rng` as it was)."""
  return voice[rng.integers(len(voice))] if len(voice) > 1 else voice[0]


def _place_calls(voice: list[tuple[str, dict]], n: int,
                 rng: np.random.Generator, silence: tuple[int, int] | None,
                 max_calls: int | None, type_rng: np.random.Generator
                 ) -> tuple[np.ndarray, list[tuple[int, int]]]:
  """A caller calling through the recording: signal and call spans.

  `voice` is its call types (`(family, params)`); each call is one of them
  (`_call_type` with `type_rng`), then its interval.
  """
  out = np.zeros(n)
  spans = []
  t = int(rng.uniform(0, min(1.0, n / SR / 3)) * SR)
  while t < n and (max_calls is None or len(spans) < max_calls):
    family, params = _call_type(voice, type_rng)
    call = synthesize_call(family, params, rng)
    in_silence = silence is not None and silence[0] <= t < silence[1]
    if not in_silence:
      end = min(n, t + len(call))
      out[t:end] += call[:end - t]
      spans.append((t, end))
    gap = params["interval"] * rng.exponential(1.0)
    t += len(call) + int(gap * SR) + 1
    if in_silence:
      t = max(t, silence[1])
  if not spans:  # Always at least one call of the species.
    family, params = _call_type(voice, type_rng)
    call = synthesize_call(family, params, rng)
    start = int(rng.integers(0, max(1, n - len(call))))
    end = min(n, start + len(call))
    out[start:end] += call[:end - start]
    spans.append((start, end))
  return out, spans


def _merge_spans(spans, gap: int) -> list[tuple[int, int]]:
  merged = []
  for s, e in sorted(spans):
    if merged and s - merged[-1][1] <= gap:
      merged[-1] = (merged[-1][0], max(merged[-1][1], e))
    else:
      merged.append((s, e))
  return merged


def synthesize_recording(spec: dict, species: list[dict]
                         ) -> tuple[np.ndarray, list[dict]]:
  """The waveform (int16) and strong labels of one recording spec.

  The harder world's options (`spec["sound_world"]`, `spec["chorus"]`)
  draw from the recording's own stream (`_SOUND_WORLD_STREAM`): each
  caller's individual voice, distance (log-uniform from `_NEAR_M` to
  `max_distance_m`: every caller is low-passed by it, and a background or
  chorus caller's level below the target is its spreading loss from
  `_NEAR_M`; the target keeps its drawn SNR, the recordist's gain following
  the subject), the room, the transient noises (each 6 dB below to 6 dB
  above the steady noise). Chorus species
  call all through the recording, 3 to 12 dB below the target (without
  distance). Events span the calls as sung, reverberation tails left out.
  """
  rng = np.random.default_rng(spec["rng_key"])
  world = spec.get("sound_world", {})
  world_rng = np.random.default_rng((*spec["rng_key"], _SOUND_WORLD_STREAM))
  variation = world.get("individual_variation", 0.0)
  max_distance = world.get("max_distance_m", 0.0)

  def voice(cid):
    return _individual(species[cid]["call_types"], variation, world_rng)

  def distance():
    if not max_distance:
      return _NEAR_M
    return float(_NEAR_M * (max_distance / _NEAR_M) ** world_rng.uniform())

  n = int(round(spec["duration"] * SR))
  silence = None
  if rng.uniform() < spec["silent_stretch_prob"] and n > 3 * SR:
    length = int(rng.uniform(0.2, 0.4) * n)
    start = int(rng.integers(0, n - length))
    silence = (start, start + length)
  target, spans = _place_calls(voice(spec["category_id"]), n, rng, silence,
                               None, world_rng)
  snr_db = rng.uniform(0, 25)
  call_power = np.mean(np.concatenate([target[s:e] for s, e in spans]) ** 2)
  noise = background_noise(NOISE_KINDS[rng.integers(len(NOISE_KINDS))], n, rng)
  for kind in TRANSIENT_NOISE_KINDS:
    if world_rng.uniform() < world.get(f"{kind}_prob", 0.0):
      noise = noise + 10 ** (world_rng.uniform(-6, 6) / 20) * transient_noise(
          kind, n, world_rng)
  room = _room_response(world.get("reverb_prob", 0.0), world_rng)
  mix = _propagate(target / math.sqrt(call_power + 1e-12)
                   * 10 ** (snr_db / 20), distance(), room) + noise
  events = [dict(category_id=spec["category_id"], start=s / SR, end=e / SR,
                 role="target") for s, e in _merge_spans(spans, SR // 2)]
  background = spec["background"]
  for i, other in enumerate(background + spec.get("chorus", [])):
    in_chorus = i >= len(background)
    caller_rng = world_rng if in_chorus else rng
    sig, other_spans = _place_calls(
        voice(other), n, caller_rng, None,
        None if in_chorus else int(rng.integers(1, 4)), world_rng)
    power = np.mean(np.concatenate([sig[s:e] for s, e in other_spans]) ** 2)
    below_db = caller_rng.uniform(3, 12) if in_chorus else rng.uniform(6, 20)
    away = distance()
    if max_distance:
      below_db = 20 * math.log10(away / _NEAR_M)
    mix += _propagate(sig / math.sqrt(power + 1e-12)
                      * 10 ** ((snr_db - below_db) / 20), away, room)
    events += [dict(category_id=other, start=s / SR, end=e / SR,
                    role="background")
               for s, e in _merge_spans(other_spans, SR // 2)]
  mix *= rng.uniform(0.1, 0.8) / (np.abs(mix).max() + 1e-12)
  return audio_lib.to_int16(mix), events


# ---------------------------------------------------------------------------
# Recordings: which species, where, when, how long.
# ---------------------------------------------------------------------------

def _split_counts(config: CorpusConfig, species: list[dict],
                  rng: np.random.Generator) -> dict[str, np.ndarray]:
  """Long-tailed per-species counts; val/test over a subset of species."""
  n_species = len(species)
  totals = [int(round(config.num_recordings * f))
            for f in config.split_fractions]
  ranks = rng.permutation(n_species) + 1
  weights = ranks ** -0.7
  train = np.maximum(2, np.round(totals[0] * weights / weights.sum()))
  train = train.astype(int)
  num_eval = max(2, int(round(n_species * config.val_test_species_fraction)))
  eval_species = np.argsort(-train, kind="stable")[:num_eval]
  counts = {"train": train}
  for split, total in zip(("validation", "test"), totals[1:]):
    weights = np.zeros(n_species)
    weights[eval_species] = rng.permutation(num_eval) + 1.0
    weights[eval_species] = weights[eval_species] ** -0.3
    c = np.zeros(n_species, int)
    c[eval_species] = np.maximum(
        1, np.round(total * weights[eval_species] / weights.sum()))
    counts[split] = c
  return counts


def _draw_chorus(config: CorpusConfig, index: int, here: list[int]
                 ) -> list[int]:
  """The chorus of the `index`-th spec: a Poisson(`chorus_density`) number
  of the species `here` (those living at its place, target and background
  callers left out), from the spec's own stream."""
  if not config.chorus_density or not here:
    return []
  rng = np.random.default_rng((config.seed, index, _CHORUS_STREAM))
  size = min(len(here), int(rng.poisson(config.chorus_density)))
  return sorted(int(x) for x in rng.choice(here, size=size, replace=False))


def _release_duration(config: CorpusConfig, index: int) -> float:
  """The `index`-th spec's duration drawn like the release's (log-normal,
  1 s to `max_duration_s`), from the spec's own stream."""
  rng = np.random.default_rng((config.seed, index, _DURATION_STREAM))
  return float(np.clip(_RELEASE_MEDIAN_DURATION_S * math.exp(
      _RELEASE_DURATION_SIGMA * rng.standard_normal()), 1.0,
                       config.max_duration_s))


def _sound_world(config: CorpusConfig) -> dict:
  """The options `synthesize_recording` reads from a spec's `sound_world`
  (empty when all are off)."""
  names = ("individual_variation", "max_distance_m", "reverb_prob",
           "rain_prob", "wind_gust_prob", "engine_prob")
  world = {name: getattr(config, name) for name in names}
  return world if any(world.values()) else {}


def make_recording_specs(config: CorpusConfig, species: list[dict],
                         rng: np.random.Generator) -> list[dict]:
  """Every recording's split, species, duration, place, date, id.

  A spec's `split` is the release's name of its split (`train`, `val`,
  `test`), as in its `file_name`. With the harder world's options on, a
  spec has `chorus` (species calling all through it, `_draw_chorus`) and
  `sound_world` (`_sound_world`).
  """
  counts = _split_counts(config, species, rng)
  specs = []
  for split, (year0, year1) in SPLIT_YEARS.items():
    for cid in np.repeat(np.arange(len(species)), counts[split]):
      s = species[cid]
      if rng.uniform() < config.long_recording_fraction:
        duration = rng.uniform(60, config.max_duration_s)
      else:
        duration = float(np.clip(
            config.median_duration_s * math.exp(0.9 * rng.standard_normal()),
            1.0, config.max_duration_s))
      if config.duration_distribution == "release":
        duration = _release_duration(config, len(specs))
      lat, lon = sphere.random_point_in_range(s["ranges"], rng)
      # Background callers are species of the same place, as in the field.
      here = [t["id"] for t in species
              if t["id"] != cid and sphere.in_range(t["ranges"], lat, lon)]
      background = []
      if here and rng.uniform() < config.background_species_prob:
        background = [int(x) for x in rng.choice(
            here, size=min(len(here), int(rng.integers(1, 3))), replace=False)]
      chorus = _draw_chorus(config, len(specs), sorted(
          set(here) - set(background)))
      if rng.uniform() < config.missing_location_fraction:
        lat = lon = None
      date = (f"{rng.integers(year0, year1 + 1)}-{rng.integers(1, 13):02d}-"
              f"{rng.integers(1, 29):02d} {rng.integers(0, 24):02d}:"
              f"{rng.integers(0, 60):02d}:00")
      specs.append(dict(
          split=release.split_files(split).name, category_id=int(cid),
          duration=round(duration, 3), latitude=lat, longitude=lon,
          location_uncertainty=(None if lat is None or rng.uniform() < 0.2
                                else int(rng.integers(5, 5000))),
          date=date, background=background,
          silent_stretch_prob=config.silent_stretch_prob,
          recording_name=f"{rng.integers(0, 2**63):016x}"))
      if chorus:
        specs[-1]["chorus"] = chorus
  order = rng.permutation(len(specs))
  sound_world = _sound_world(config)
  for audio_id, spec in enumerate(specs):
    spec["audio_id"] = int(order[audio_id]) + 1
    spec["rng_key"] = (config.seed, spec["audio_id"])
    if sound_world:
      spec["sound_world"] = sound_world
    dir_name = species[spec["category_id"]]["dir_name"]
    spec["file_name"] = (f"{spec['split']}/{dir_name}/"
                         f"{spec['recording_name']}.wav")
  return specs


def make_checklist(spec: dict, events: list[dict], species: list[dict],
                   config: CorpusConfig) -> list[int]:
  """The recordist's species list for the outing the recording came from.

  Drawn from the truth the way field checklists err (the Merlin L48 study's
  checklist negatives come from such lists): the recording's target is always
  listed; each background caller is listed with probability
  `1 - checklist_omission` (the rest are missed, so checklist negatives are
  sometimes wrong); each other species living at the site (its true range
  covers the place) with probability `checklist_site_species`, heard or seen
  there but not in this recording. Recordings without a location list only
  what was heard. Drawn from its own stream, so adding checklists changed no
  other file. Sorted category ids.
  """
  rng = np.random.default_rng((config.seed, spec["audio_id"], 1))
  audible = {e["category_id"] for e in events}
  listed = {spec["category_id"]}
  for cid in sorted(audible - listed):
    if rng.uniform() >= config.checklist_omission:
      listed.add(cid)
  if spec["latitude"] is not None:
    for t in species:
      here = sphere.in_range(t["ranges"], spec["latitude"],
                                 spec["longitude"])
      if (t["id"] not in audible and bool(here)
          and rng.uniform() < config.checklist_site_species):
        listed.add(t["id"])
  return sorted(int(c) for c in listed)


# ---------------------------------------------------------------------------
# Writing the release layout.
# ---------------------------------------------------------------------------

def _write_one(args) -> list[dict]:
  spec, species, out_dir = args
  waveform, events = synthesize_recording(spec, species)
  path = os.path.join(out_dir, spec["file_name"])
  os.makedirs(os.path.dirname(path), exist_ok=True)
  audio_lib.write_wav(path, waveform)
  return events


def _annotation_json(config: CorpusConfig, split: str, species: list[dict],
                     specs: list[dict]) -> dict:
  categories = [release.Category(
      id=t["id"], name=t["name"], common_name=t["common_name"],
      supercategory=t["supercategory"],
      taxonomy={"kingdom": "Animalia", "phylum": t["phylum"],
                "class": t["cls"], "order": t["order"],
                "family": t["family_name"], "genus": t["genus"],
                "specific_epithet": t["epithet"]},
      dir_name=t["dir_name"]) for t in species]
  items = [release.Item(
      annotation_id=s["audio_id"], audio_id=s["audio_id"],
      category_id=s["category_id"], file_name=s["file_name"],
      duration=s["duration"], latitude=s["latitude"],
      longitude=s["longitude"],
      location_uncertainty=s["location_uncertainty"], date=s["date"],
      license=1, rights_holder="synthetic") for s in specs]
  return release.annotation_document(
      info={"year": 2024, "version": "synthetic-1.0",
            "description": f"inatsounds_jax synthetic corpus, {split} split",
            "contributor": "inatsounds_jax", "url": "",
            "date_created": "2024-01-01"},
      licenses=[{"id": 1, "name": "CC0 (synthetic)", "url": ""}],
      categories=categories, items=items, key_style=config.key_style)


def _deterministic_tar_gz(path: str, members: list[tuple[str, str]]) -> None:
  """A .tar.gz whose bytes depend only on the members' contents."""
  with open(path, "wb") as raw, gzip.GzipFile(
      fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz, tarfile.open(
          fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
    for arcname, source in members:
      info = tarfile.TarInfo(arcname)
      info.size = os.path.getsize(source)
      info.mode = 0o644
      with open(source, "rb") as f:
        tar.addfile(info, f)


class CorpusDirError(registry.ConfigError):
  """The output folder holds files the generator did not write."""


# The fields corpora were first made with. A later field is written to the
# manifest only away from its default, so that a corpus made before it
# existed is still found complete, and a default corpus's bytes (its
# manifest too) stay the same.
_FIRST_FIELDS = (
    "num_species", "num_recordings", "seed", "median_duration_s",
    "max_duration_s", "long_recording_fraction", "lookalike_pair_fraction",
    "missing_location_fraction", "background_species_prob",
    "silent_stretch_prob", "val_test_species_fraction", "split_fractions",
    "checklist_omission", "checklist_site_species", "key_style", "archives")


def _config_json(config: CorpusConfig) -> dict:
  default = CorpusConfig()
  fields = {name: value for name, value in dataclasses.asdict(config).items()
            if name in _FIRST_FIELDS or value != getattr(default, name)}
  return json.loads(json.dumps(fields))


def _planned_files(config: CorpusConfig, specs: list[dict]) -> list[str]:
  """Every file `generate` writes, relative to the output folder."""
  files = [s["file_name"] for s in specs]
  for split in SPLIT_YEARS:
    names = release.split_files(split)
    files.append(names.annotations)
    if config.archives:
      files += [names.annotations_archive, names.archive]
  return files + [release.STRONG_LABELS_FILE, release.RANGES_FILE]


def _read_manifest(out_dir: str) -> dict | None:
  """The manifest in `out_dir`, None if there is none."""
  path = os.path.join(out_dir, MANIFEST)
  try:
    with open(path) as f:
      manifest = json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    raise CorpusDirError(f"{path}: unreadable generator manifest ({e}); "
                         "delete the folder and generate again") from e
  files = manifest.get("files") if isinstance(manifest, dict) else None
  if not isinstance(files, list) or not all(
      isinstance(p, str) and p and not os.path.isabs(p)
      and os.path.normpath(p) == p and not p.startswith("..") for p in files):
    raise CorpusDirError(f"{path}: damaged generator manifest (its file list "
                         "is not a list of paths inside the folder); delete "
                         "the folder and generate again")
  return manifest


def _write_manifest(out_dir: str, manifest: dict) -> None:
  """Replaces the manifest whole (a crash leaves the old or the new)."""
  storage.write_json(os.path.join(out_dir, MANIFEST), manifest)


def _refuse_foreign_files(out_dir: str, owned: set[str]) -> None:
  """Raises `CorpusDirError` naming files in `out_dir` not in `owned`."""
  foreign = []
  for root, folders, files in os.walk(out_dir):
    # A link to a folder would lead writes out of `out_dir`: never followed.
    links = [name for name in folders
             if os.path.islink(os.path.join(root, name))]
    for name in files + links:
      rel = os.path.relpath(os.path.join(root, name), out_dir)
      if rel not in owned and rel not in (
          MANIFEST, MANIFEST + storage.PARTIAL_SUFFIX):
        foreign.append(rel)
  if foreign:
    foreign.sort()
    raise CorpusDirError(
        f"{out_dir} holds {len(foreign)} file(s) the synthetic generator did "
        f"not write ({MANIFEST} does not list them), e.g. "
        f"{', '.join(foreign[:5])}. Generating there could overwrite or "
        "delete them: choose an empty or new folder, or move them out.")


def _remove_own_files(out_dir: str, files) -> None:
  """Deletes listed files, then the folders that this leaves empty."""
  folders = set()
  for rel in files:
    path = os.path.join(out_dir, rel)
    if os.path.lexists(path):
      os.remove(path)
    folder = os.path.dirname(rel)
    while folder:
      folders.add(folder)
      folder = os.path.dirname(folder)
  for folder in sorted(folders, key=len, reverse=True):
    path = os.path.join(out_dir, folder)
    if os.path.isdir(path) and not os.listdir(path):
      os.rmdir(path)


def generate(out_dir: str, config: CorpusConfig = CorpusConfig(),
             num_workers: int | None = None) -> dict:
  """Writes the corpus to `out_dir` and returns a summary.

  Safe on any folder: it writes only into a new or empty folder or one it
  generated before. A complete earlier generation with the same config is
  reused as it is (the summary then says `"reused": true`); one with another
  config is replaced, deleting only the files its manifest lists.

  Raises:
    CorpusDirError: `out_dir` holds files the generator did not write (named
      in the message); nothing is written or deleted.
  """
  start = time.time()
  rng = np.random.default_rng(config.seed)
  species = make_species(config, rng)
  specs = make_recording_specs(config, species, rng)
  files = _planned_files(config, specs)
  previous = _read_manifest(out_dir) or {"files": []}
  same_config = previous.get("config") == _config_json(config)
  if (previous.get("complete") and same_config
      and all(os.path.isfile(os.path.join(out_dir, p)) for p in files)):
    return dict(previous["summary"], seconds=round(time.time() - start, 1),
                reused=True)
  os.makedirs(out_dir, exist_ok=True)
  _refuse_foreign_files(out_dir, set(previous["files"]))
  # Listed before anything is written, so that a crash leaves no file that a
  # later run would take for a stranger's.
  _write_manifest(out_dir, {
      "complete": False, "config": _config_json(config),
      "files": sorted(set(files) | set(previous["files"]))})
  _remove_own_files(out_dir, set(previous["files"]) - set(files))

  num_workers = num_workers or os.cpu_count() or 1
  jobs = [(s, species, out_dir) for s in specs]
  if num_workers > 1:
    with multiprocessing.get_context("spawn").Pool(num_workers) as pool:
      events = pool.map(_write_one, jobs, chunksize=4)
  else:
    events = [_write_one(j) for j in jobs]

  for split in SPLIT_YEARS:
    names = release.split_files(split)
    split_specs = [s for s in specs if s["split"] == names.name]
    json_path = os.path.join(out_dir, names.annotations)
    with open(json_path, "w") as f:
      json.dump(_annotation_json(config, names.name, species, split_specs), f)
    if config.archives:
      _deterministic_tar_gz(os.path.join(out_dir, names.annotations_archive),
                            [(names.annotations, json_path)])
      _deterministic_tar_gz(
          os.path.join(out_dir, names.archive),
          [(s["file_name"], os.path.join(out_dir, s["file_name"]))
           for s in split_specs])
  strong = [{"audio_id": spec["audio_id"], "split": spec["split"],
             "file_name": spec["file_name"], "events": ev,
             "checklist": make_checklist(spec, ev, species, config)}
            for spec, ev in zip(specs, events)]
  with open(os.path.join(out_dir, release.STRONG_LABELS_FILE), "w") as f:
    json.dump(strong, f)
  with open(os.path.join(out_dir, release.RANGES_FILE), "w") as f:
    json.dump([{"category_id": t["id"], "name": t["name"],
                "lookalike_of": t.get("lookalike_of"), "ranges": t["ranges"]}
               for t in species], f, indent=1)
  summary = {
      "config": _config_json(config),
      "num_species": len(species),
      "recordings": {name: sum(s["split"] == name for s in specs)
                     for name in (release.split_files(split).name
                                  for split in SPLIT_YEARS)},
      "hours_of_audio": round(sum(s["duration"] for s in specs) / 3600, 3),
  }
  _write_manifest(out_dir, {"complete": True, "config": _config_json(config),
                            "files": sorted(files), "summary": summary})
  return dict(summary, seconds=round(time.time() - start, 1))


def is_complete(out_dir: str, config: CorpusConfig) -> bool:
  """Whether `out_dir` holds a finished corpus made with `config`."""
  try:
    manifest = _read_manifest(out_dir)
  except CorpusDirError:
    return False
  return bool(manifest and manifest.get("complete")
              and manifest.get("config") == _config_json(config))


# ---------------------------------------------------------------------------
# Annotated soundscapes: long multi-species recordings with Raven tables.
# ---------------------------------------------------------------------------

SOUNDSCAPE_AUDIO_DIR = "soundscapes"
SOUNDSCAPE_TABLE_DIR = "soundscape_annotations"
SOUNDSCAPE_SPECIES_MAP = "soundscape_species_map.csv"
RAVEN_TABLE_SUFFIX = ".Table.1.selections.txt"
SOUNDSCAPE_COLUMNS = ("Selection", "View", "Channel", "Begin Time (s)",
                      "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)",
                      "Species")
# A call's samples below this fraction of its peak are trimmed from its ends,
# so that an event spans only where the call is heard (whistles end in a
# note gap, trills and click trains in a period of silence).
_TRIM_FRACTION = 1e-3
# The frequency band written holds this central share of a call's energy.
_BAND_ENERGY = 0.98


def species_codes(species: list[dict]) -> list[str]:
  """A short code per species (like eBird's): 3 letters of the genus and 3
  of the epithet, lower case, a number added where two would be equal
  (look-alikes share the genus)."""
  codes, seen = [], set()
  for s in species:
    code = (s["genus"][:3] + s["epithet"][:3]).lower()
    if code in seen:
      code = f"{code}{s['id']}"
    seen.add(code)
    codes.append(code)
  return codes


def _trimmed(call: np.ndarray) -> np.ndarray:
  """The call without its silent ends (`_TRIM_FRACTION`)."""
  loud = np.flatnonzero(np.abs(call) > _TRIM_FRACTION * np.abs(call).max())
  return call[loud[0]:loud[-1] + 1] if len(loud) else call[:1]


def _call_band(call: np.ndarray) -> tuple[float, float]:
  """The band (Hz) holding the central `_BAND_ENERGY` of a call's energy."""
  power = np.abs(np.fft.rfft(call)) ** 2
  cumulative = np.cumsum(power) / max(power.sum(), 1e-30)
  freqs = np.fft.rfftfreq(len(call), 1.0 / SR)
  tail = (1.0 - _BAND_ENERGY) / 2
  low = freqs[min(np.searchsorted(cumulative, tail), len(freqs) - 1)]
  high = freqs[min(np.searchsorted(cumulative, 1.0 - tail), len(freqs) - 1)]
  return float(low), float(max(high, low + 1.0))


def synthesize_soundscape(species: list[dict], seconds: float,
                          rng: np.random.Generator
                          ) -> tuple[np.ndarray, list[dict]]:
  """One field recording of several species and its events.

  Several species (3 to 6, fewer where the corpus has fewer) each call
  through a bout of their own (a random part of the recording) at their
  own interval, at their own level over a background of one of the
  corpus's noise kinds (`NOISE_KINDS`), so calls of different species
  overlap; one stretch (a sixth to a third of the recording) has no call,
  only noise. Calls are `synthesize_call`'s, as in the corpus, trimmed of
  their silent ends: each event (one per call, never merged) spans exactly
  the samples its call occupies, and its band holds the central
  `_BAND_ENERGY` of the call's energy. Memory is a few arrays of the
  recording's length.

  Returns:
    The int16 waveform and the events, sorted by start: dicts `category_id`,
    `start`, `end` (seconds, whole samples), `low_hz`, `high_hz`.
  """
  n = int(round(seconds * SR))
  num_species = min(len(species), int(rng.integers(3, 7)))
  chosen = [int(c) for c in rng.choice(len(species), size=num_species,
                                       replace=False)]
  quiet_len = int(rng.uniform(1 / 6, 1 / 3) * n)
  quiet_start = int(rng.integers(0, max(1, n - quiet_len)))
  quiet = (quiet_start, quiet_start + quiet_len)
  noise = background_noise(NOISE_KINDS[rng.integers(len(NOISE_KINDS))], n,
                           rng)
  mix = noise.copy()
  events = []
  for cid in chosen:
    s = species[cid]
    level = 10 ** (rng.uniform(6, 20) / 20)  # Call RMS over noise RMS.
    bout_len = int(rng.uniform(0.3, 1.0) * n)
    t = int(rng.integers(0, max(1, n - bout_len)))
    bout_end = t + bout_len
    while t < bout_end:
      family, params = _call_type(s["call_types"], rng)
      call = _trimmed(synthesize_call(family, params, rng))
      end = t + len(call)
      if end <= min(n, bout_end) and (end <= quiet[0] or t >= quiet[1]):
        rms = math.sqrt(np.mean(call ** 2) + 1e-24)
        mix[t:end] += call / rms * level
        low, high = _call_band(call)
        events.append(dict(category_id=cid, start=t / SR, end=end / SR,
                           low_hz=low, high_hz=high))
      gap = params["interval"] * rng.exponential(1.0)
      t = end + int(gap * SR) + 1
  mix *= rng.uniform(0.3, 0.8) / (np.abs(mix).max() + 1e-12)
  events.sort(key=lambda e: (e["start"], e["category_id"]))
  return audio_lib.to_int16(mix), events


def _write_raven_table(path: str, events: list[dict], names: list[str]
                       ) -> None:
  """A Raven selection table, one Spectrogram 1 row per event; written to
  a temporary name and renamed, so a table that exists is complete."""
  lines = ["\t".join(SOUNDSCAPE_COLUMNS)]
  for number, e in enumerate(events, start=1):
    lines.append("\t".join((
        str(number), "Spectrogram 1", "1", f"{e['start']:.6f}",
        f"{e['end']:.6f}", f"{e['low_hz']:.1f}", f"{e['high_hz']:.1f}",
        names[e["category_id"]])))
  storage.write_whole(path, "\n".join(lines) + "\n")


def write_soundscapes(out_dir: str, config: CorpusConfig = CorpusConfig(),
                      num_recordings: int = 4, seconds: float = 60.0,
                      seed: int = 0, codes: bool = False) -> dict:
  """Writes annotated soundscapes of the corpus's species to `out_dir`.

  The layout `python -m inatsounds_jax.evaluate --audio=OUT/soundscapes
  --annotations=OUT/soundscape_annotations` reads:
  `soundscapes/<name>.wav` (mono int16, `SR`),
  `soundscape_annotations/<name>.Table.1.selections.txt` (Raven selection
  tables, `SOUNDSCAPE_COLUMNS`), and `soundscape_species_map.csv`
  (`code,scientific_name` for every species, `species_codes`). The species
  are those `generate` makes for `config` (the same seed gives the same
  species and call parameters); each recording is `synthesize_soundscape`.

  Args:
    out_dir: the output folder; new, empty or one holding only the files
      this writes (which are overwritten).
    config: the corpus whose species call.
    num_recordings: how many recordings, each `seconds` long.
    seed: the soundscapes' own seed, beside `config.seed`: the same pair
      gives byte-identical files.
    codes: the tables name species by code (exercising `--species_map`)
      instead of by scientific name.

  Returns:
    A summary: recordings, events, species heard, the folders.

  Raises:
    registry.ConfigError: a bad count or length (named as the command's
      flags, `soundscapes=`, `soundscape_seconds=`).
    CorpusDirError: `out_dir` holds other files (named); nothing is written.
  """
  if num_recordings < 1:
    raise registry.ConfigError(
        f"soundscapes={num_recordings}: give 1 or more recordings")
  if not seconds >= 1.0:
    raise registry.ConfigError(
        f"soundscape_seconds={seconds}: give 1 s or more")
  species = make_species(config, np.random.default_rng(config.seed))
  code_of = species_codes(species)
  names = code_of if codes else [s["name"] for s in species]
  stems = [f"soundscape_{i:04d}" for i in range(num_recordings)]
  files = ([os.path.join(SOUNDSCAPE_AUDIO_DIR, f"{stem}.wav")
            for stem in stems]
           + [os.path.join(SOUNDSCAPE_TABLE_DIR, stem + RAVEN_TABLE_SUFFIX)
              for stem in stems] + [SOUNDSCAPE_SPECIES_MAP])
  if os.path.isdir(out_dir):
    _refuse_foreign_files(out_dir, set(files))
  for folder in (SOUNDSCAPE_AUDIO_DIR, SOUNDSCAPE_TABLE_DIR):
    os.makedirs(os.path.join(out_dir, folder), exist_ok=True)
  with open(os.path.join(out_dir, SOUNDSCAPE_SPECIES_MAP), "w",
            encoding="utf-8") as f:
    f.write("code,scientific_name\n" + "".join(
        f"{c},{s['name']}\n" for c, s in zip(code_of, species)))
  num_events, heard = 0, set()
  for i, stem in enumerate(stems):
    # Its own stream per recording; the corpus's keys are 2 or 3 long.
    rng = np.random.default_rng((config.seed, seed, i, 2, 7))
    waveform, events = synthesize_soundscape(species, seconds, rng)
    audio_lib.write_wav(
        os.path.join(out_dir, SOUNDSCAPE_AUDIO_DIR, f"{stem}.wav"), waveform)
    _write_raven_table(os.path.join(out_dir, SOUNDSCAPE_TABLE_DIR,
                                    stem + RAVEN_TABLE_SUFFIX), events, names)
    num_events += len(events)
    heard.update(e["category_id"] for e in events)
  return {"soundscapes": num_recordings, "seconds": seconds,
          "events": num_events, "species_heard": len(heard),
          "audio": os.path.join(out_dir, SOUNDSCAPE_AUDIO_DIR),
          "annotations": os.path.join(out_dir, SOUNDSCAPE_TABLE_DIR),
          "species_map": os.path.join(out_dir, SOUNDSCAPE_SPECIES_MAP)}


def main(argv=None) -> None:
  defaults = CorpusConfig()
  parser = argparse.ArgumentParser(
      prog="python -m inatsounds_jax.synthetic",
      description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument(
      "--world", choices=WORLDS, default="default",
      help="hard: CorpusConfig.hard's fields (HARD_WORLD) as the defaults "
      "of the flags below")
  for field in dataclasses.fields(CorpusConfig):
    value = getattr(defaults, field.name)
    if isinstance(value, bool):
      parser.add_argument(f"--{field.name}", default=value,
                          action=argparse.BooleanOptionalAction)
    elif isinstance(value, (int, float, str)):
      parser.add_argument(f"--{field.name}", type=type(value), default=value)
  parser.add_argument("--num_workers", type=int, default=None)
  parser.add_argument(
      "--soundscapes", type=int, default=0,
      help="write this many annotated soundscapes of the corpus's species "
      "to --out instead of the corpus (write_soundscapes)")
  parser.add_argument("--soundscape_seconds", type=float, default=60.0)
  parser.add_argument("--soundscape_seed", type=int, default=0)
  parser.add_argument("--soundscape_codes", default=False,
                      action=argparse.BooleanOptionalAction,
                      help="tables name species by code (the species map "
                      "CSV gives the scientific names)")
  world, _ = parser.parse_known_args(argv)
  parser.set_defaults(**WORLDS[world.world])
  args = vars(parser.parse_args(argv))
  out, workers = args.pop("out"), args.pop("num_workers")
  args.pop("world")
  soundscapes = {name: args.pop(name) for name in (
      "soundscapes", "soundscape_seconds", "soundscape_seed",
      "soundscape_codes")}
  # Each problem in one line naming the flag (the config's fields are the
  # flags) or the file.
  if workers is not None and workers < 0:
    parser.exit(2, f"error: --num_workers={workers}: give 1 or more (0: "
                "one per CPU core)\n")
  if soundscapes["soundscapes"] < 0:
    parser.exit(2, f"error: --soundscapes={soundscapes['soundscapes']}: "
                "give 1 or more (0: the corpus)\n")
  try:
    if soundscapes["soundscapes"]:
      summary = write_soundscapes(
          out, CorpusConfig(**args), soundscapes["soundscapes"],
          soundscapes["soundscape_seconds"], soundscapes["soundscape_seed"],
          soundscapes["soundscape_codes"])
    else:
      summary = generate(out, CorpusConfig(**args), num_workers=workers)
  except registry.ConfigError as e:  # A field's value, or a foreign --out.
    message = f" {e}"
    for name in ([f.name for f in dataclasses.fields(CorpusConfig)]
                 + ["soundscapes", "soundscape_seconds"]):  # As flags.
      message = message.replace(f" {name}=", f" --{name}=")
    parser.exit(2, f"error:{message}\n")
  except OSError as e:
    parser.exit(2, f"error: {e.filename or out}: {e.strerror or e}\n")
  print(json.dumps(summary, indent=1))


if __name__ == "__main__":
  main()
