"""The synthetic generator's harder world (`CorpusConfig.hard` and its
options): deterministic, off by default, and doing what each says."""

import dataclasses
import json
import math
import os

import numpy as np
import pytest

from inatsounds_jax import registry
from inatsounds_jax import sphere
from inatsounds_jax import synthetic
from tests.conftest import SMALL
from tests.test_synthetic import _digest, _load

# `tests.conftest.SMALL`'s corpus as the generator wrote it before the
# harder world's options existed (manifest included).
SMALL_DIGEST = (
    "69297d46c847e0a5e738aeb323c54c53d8aaf14cb80aec3bcb443e3d101ab6e5")
TINY = synthetic.CorpusConfig(num_species=5, num_recordings=15, seed=4,
                              median_duration_s=2.0, max_duration_s=4.0,
                              long_recording_fraction=0.0, archives=False)
OPTIONS = {
    "num_realms": 1, "call_types_per_species": 3,
    "individual_variation": 0.1, "chorus_density": 3.0,
    "max_distance_m": 200.0, "reverb_prob": 1.0, "rain_prob": 1.0,
    "wind_gust_prob": 1.0, "engine_prob": 1.0,
}


def _species(**fields):
  config = synthetic.CorpusConfig(**fields)
  return synthetic.make_species(config, np.random.default_rng(config.seed))


def test_default_corpus_is_unchanged_byte_for_byte(small_corpus):
  assert _digest(small_corpus) == SMALL_DIGEST
  manifest = _load(small_corpus, synthetic.MANIFEST)
  assert "chorus_density" not in manifest["config"]  # Old corpora still match.
  assert synthetic.is_complete(small_corpus, SMALL)


@pytest.mark.parametrize("field", sorted(OPTIONS))
def test_each_option_is_deterministic_by_seed_and_changes_the_corpus(
    field, tmp_path):
  # On one continent, so that choruses find species living at the place.
  off = TINY if field == "num_realms" else dataclasses.replace(
      TINY, num_realms=1)
  digests = []
  for name, config in (
      ("a", dataclasses.replace(off, **{field: OPTIONS[field]})),
      ("b", dataclasses.replace(off, **{field: OPTIONS[field]})),
      ("other_seed", dataclasses.replace(off, seed=5,
                                         **{field: OPTIONS[field]})),
      ("off", off)):
    synthetic.generate(str(tmp_path / name), config, num_workers=1)
    digests.append(_digest(str(tmp_path / name)))
  assert digests[0] == digests[1]
  assert digests[2] != digests[0] and digests[3] != digests[0]


def test_choruses_raise_the_audible_species(tmp_path):
  means = []
  for density in (0.0, 3.0):
    out = str(tmp_path / str(density))
    synthetic.generate(out, dataclasses.replace(
        TINY, num_species=8, num_recordings=24, num_realms=1,
        chorus_density=density), num_workers=1)
    means.append(np.mean([len({e["category_id"] for e in r["events"]})
                          for r in _load(out, "strong_labels.json")]))
  assert means[1] > means[0] + 1.0


def test_shared_range_lookalikes_overlap_and_others_live_apart():
  for fraction in (0.0, 1.0):
    fields = dict(num_species=40, num_recordings=120,
                  lookalike_shared_range_fraction=fraction)
    species = _species(**fields)
    assert species == _species(**fields)  # Deterministic by seed.
    assert species != _species(**fields, seed=1)
    pairs = [(s, species[s["lookalike_of"]]) for s in species
             if s.get("lookalike_of") is not None]
    assert len(pairs) >= 4
    for b, a in pairs:
      points = [sphere.random_point_in_range(b["ranges"],
                                             np.random.default_rng(i))
                for i in range(50)]
      shared = np.mean([bool(sphere.in_range(a["ranges"], *p))
                        for p in points])
      if fraction:
        assert b["realm"] == a["realm"] and shared > 0.3
      else:
        assert b["realm"] != a["realm"] and shared == 0.0


def test_call_types_come_from_the_supercategory_and_lookalikes_copy_them():
  species = _species(num_species=20, num_recordings=60,
                     call_types_per_species=3)
  families = {s[0]: s[5] for s in synthetic.SUPERCATEGORIES}
  for s in species:
    assert len(s["call_types"]) == 3
    assert s["call_types"][0] == (s["call_family"], s["params"])
    assert {f for f, _ in s["call_types"]} <= set(families[s["supercategory"]])
    if s.get("lookalike_of") is not None:
      partner = species[s["lookalike_of"]]["call_types"]
      for (family, params), (partner_family, partner_params) in zip(
          s["call_types"], partner):
        assert family == partner_family
        for k, v in params.items():
          assert math.isclose(v, partner_params[k], rel_tol=0.021)
  # Off: the species are those made before call types existed.
  default = _species(num_species=20, num_recordings=60)
  assert all(len(s["call_types"]) == 1 for s in default)
  assert [s["params"] for s in default] == [s["params"] for s in species]


def test_over_a_hundred_species_generate(tmp_path):
  config = synthetic.CorpusConfig(
      num_species=120, num_recordings=360, median_duration_s=1.0,
      max_duration_s=1.5, long_recording_fraction=0.0, archives=False)
  species = _species(**dataclasses.asdict(config))
  assert len({s["name"] for s in species}) == 120
  assert len({s["dir_name"] for s in species}) == 120
  assert len(set(synthetic.species_codes(species))) == 120
  summary = synthetic.generate(str(tmp_path / "c"), config, num_workers=1)
  assert summary["num_species"] == 120
  assert len(_load(str(tmp_path / "c"), "train.json")["categories"]) == 120


def _frame_energy_spread_db(signal: np.ndarray) -> float:
  frames = signal[:len(signal) // 1024 * 1024].reshape(-1, 1024)
  return float(np.std(10 * np.log10(np.mean(frames ** 2, axis=1))))


@pytest.mark.parametrize("kind", synthetic.TRANSIENT_NOISE_KINDS)
def test_non_stationary_noise_varies_the_frame_energy(kind):
  n = 20 * synthetic.SR
  steady = synthetic.background_noise("pink", n, np.random.default_rng(0))
  transient = synthetic.transient_noise(kind, n, np.random.default_rng(1))
  assert math.isclose(np.sqrt(np.mean(transient ** 2)), 1.0, rel_tol=1e-6)
  assert (_frame_energy_spread_db(steady + transient)
          > 2 * _frame_energy_spread_db(steady))


def test_distance_low_passes_and_reverberation_prolongs():
  rng = np.random.default_rng(0)
  call = np.zeros(synthetic.SR)
  call[:2000] = rng.standard_normal(2000)

  def high_share(x):
    power = np.abs(np.fft.rfft(x)) ** 2
    return power[len(power) // 2:].sum() / power.sum()

  near = synthetic._propagate(call, 10.0, None)  # pylint: disable=protected-access
  far = synthetic._propagate(call, 200.0, None)  # pylint: disable=protected-access
  assert near is call
  assert high_share(far) < 0.5 * high_share(call)
  room = synthetic._room_response(1.0, rng)  # pylint: disable=protected-access
  wet = synthetic._propagate(call, 10.0, room)  # pylint: disable=protected-access
  assert np.sum(wet[4000:] ** 2) > 100 * np.sum(call[4000:] ** 2 + 1e-30)


def test_hard_preset_and_the_command_flag(tmp_path, capsys):
  hard = synthetic.CorpusConfig.hard(num_species=7)
  assert hard.num_species == 7 and hard.chorus_density > 0
  assert hard.num_realms == 1 and hard.call_types_per_species > 1
  synthetic.main(["--out", str(tmp_path / "c"), "--world", "hard",
                  "--num_species", "3", "--num_recordings", "9",
                  "--median_duration_s", "1", "--max_duration_s", "2",
                  "--long_recording_fraction", "0", "--no-archives",
                  "--num_workers", "1"])
  config = json.loads(capsys.readouterr().out)["config"]
  assert config["num_species"] == 3  # A flag beats the preset.
  for field in ("chorus_density", "num_realms", "rain_prob"):
    assert config[field] == synthetic.HARD_WORLD[field]
  assert synthetic.is_complete(str(tmp_path / "c"), dataclasses.replace(
      synthetic.CorpusConfig.hard(), num_species=3, num_recordings=9,
      median_duration_s=1.0, max_duration_s=2.0, long_recording_fraction=0.0,
      archives=False))


@pytest.mark.parametrize("field, value", [
    ("num_realms", 0), ("call_types_per_species", 0),
    ("individual_variation", 0.5), ("chorus_density", -1.0),
    ("max_distance_m", 5.0), ("rain_prob", 1.5),
])
def test_bad_option_values_are_refused_naming_the_field(field, value):
  with pytest.raises(registry.ConfigError, match=f"^{field}={value}: give"):
    synthetic.CorpusConfig(**{field: value})


def test_hard_world_generates_files_in_the_release_layout(tmp_path):
  out = str(tmp_path / "hard")
  synthetic.generate(out, synthetic.CorpusConfig.hard(
      num_species=6, num_recordings=18, median_duration_s=2.0,
      max_duration_s=4.0, long_recording_fraction=0.0, archives=False),
                     num_workers=1)
  strong = _load(out, "strong_labels.json")
  assert len(strong) == sum(len(_load(out, f"{s}.json")["audio"])
                            for s in ("train", "val", "test"))
  for rec in strong:
    assert os.path.isfile(os.path.join(out, rec["file_name"]))
