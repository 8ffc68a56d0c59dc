"""Range model (SINR) and the geographic prior."""

import csv
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inatsounds_jax import sphere
from inatsounds_jax import synthetic
from inatsounds_jax.geo import prior as prior_lib
from inatsounds_jax.geo import range_model as range_lib
from inatsounds_jax.geo import sinr


def test_encoding_by_hand():
  enc = np.asarray(sinr.encode(jnp.array([45.0, -90.0]),
                               jnp.array([90.0, 180.0])))
  # lon/180 = 0.5, lat/90 = 0.5: sin(pi/2), sin(pi/2), cos(pi/2), cos(pi/2).
  np.testing.assert_allclose(enc[0], [1.0, 1.0, 0.0, 0.0], atol=1e-6)
  # lon/180 = 1, lat/90 = -1: sin(pi), sin(-pi), cos(pi), cos(-pi).
  np.testing.assert_allclose(enc[1], [0.0, 0.0, -1.0, -1.0], atol=1e-6)


def test_an_full_loss_by_hand():
  # Two observations, three species; p = sigmoid(logits).
  logits = jnp.log(jnp.array([[0.5 / 0.5, 0.2 / 0.8, 0.1 / 0.9],
                              [0.4 / 0.6, 0.9 / 0.1, 0.5 / 0.5]]))
  random = jnp.log(jnp.array([[0.1 / 0.9, 0.2 / 0.8, 0.3 / 0.7],
                              [0.3 / 0.7, 0.2 / 0.8, 0.1 / 0.9]]))
  species = jnp.array([0, 1])
  pos = 2048.0 * (-math.log(0.5) - math.log(0.9))
  neg = -(math.log(0.8) + math.log(0.9) + math.log(0.6) + math.log(0.5))
  rand = -2 * (math.log(0.9) + math.log(0.8) + math.log(0.7))
  expected = (pos + neg) / 6 + rand / 6
  got = float(sinr.assume_negative_full_loss(logits, species, random))
  assert got == pytest.approx(expected, rel=1e-5)
  # Saturated logits stay finite.
  assert np.isfinite(float(sinr.assume_negative_full_loss(
      jnp.array([[-200.0, 200.0]]), jnp.array([0]), jnp.array([[200.0, 0.0]]))))


def test_random_locations_cover_the_sphere_evenly():
  lat, lon = sinr.random_locations(jax.random.PRNGKey(0), 200_000)
  lat, lon = np.asarray(lat), np.asarray(lon)
  assert lat.min() >= -90 and lat.max() <= 90 and np.abs(lon).max() <= 180
  # Uniform over area: the band |lat| < 30 holds half of the sphere.
  assert np.mean(np.abs(lat) < 30) == pytest.approx(0.5, abs=0.01)


def _observations(num_species=6, per_species=300, seed=0):
  """Observations inside known range circles (as the synthetic corpus)."""
  rng = np.random.default_rng(seed)
  species = synthetic.make_species(
      synthetic.CorpusConfig(num_species=num_species,
                             num_recordings=3 * num_species, seed=seed), rng)
  lat, lon, label = [], [], []
  for i, s in enumerate(species):
    for _ in range(per_species):
      a, b = sphere.random_point_in_range(s["ranges"], rng)
      lat.append(a)
      lon.append(b)
      label.append(i)
  names = [s["name"] for s in species]
  return range_lib.Observations(lat, lon, label, names), species


@pytest.fixture(scope="module")
def trained():
  obs, species = _observations()
  model = range_lib.train(obs, epochs=60, batch_size=256, learning_rate=2e-3)
  return model, species


@pytest.fixture(scope="module")
def briefly_trained():
  """A range model for tests of saving and plotting, not of quality."""
  obs, species = _observations(per_species=20)
  model = range_lib.train(obs, epochs=1, batch_size=64, learning_rate=2e-3)
  return model, species


@pytest.mark.slow  # Trains a range model (tens of seconds).
def test_training_recovers_the_ranges(trained):
  model, species = trained
  lat, lon = range_lib.sphere_points(5000)
  truth = np.stack([sphere.in_range(s["ranges"], lat, lon)
                    for s in species], axis=1)
  q = range_lib.quality(model.presence(lat, lon), truth)
  chance = truth.mean()
  assert q["map"] > max(0.6, 4 * chance), q
  assert q["kept"] > 0.8, q
  assert q["masked_outside"] > 0.5, q


def test_checkpoint_round_trip(briefly_trained, tmp_path):
  model, _ = briefly_trained
  model.save(str(tmp_path / "rm"))
  loaded = range_lib.load(str(tmp_path / "rm"))
  assert loaded.species_names == model.species_names
  lat, lon = range_lib.sphere_points(100)
  np.testing.assert_array_equal(loaded.presence(lat, lon),
                                model.presence(lat, lon))
  with pytest.raises(FileNotFoundError, match="not a range model"):
    range_lib.load(str(tmp_path))


def test_range_maps_png(briefly_trained, tmp_path):
  model, _ = briefly_trained
  path = range_lib.plot_range_maps(model.presence, model.species_names,
                                   model.species_names[:4],
                                   str(tmp_path / "maps.png"))
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with pytest.raises(ValueError, match="not in the range model"):
    range_lib.plot_range_maps(model.presence, model.species_names,
                              ["Nonexistent species"], str(tmp_path / "x.png"))


def _constant_prior(label_names, range_species, value):
  return prior_lib.GeoPrior(
      lambda lat, lon: np.tile(np.asarray(value, float), (len(lat), 1)),
      range_species, label_names)


def test_mask_matches_by_name_and_keeps_uncovered_species():
  # The range model lists species in another order and lacks "C".
  prior = _constant_prior(["A", "B", "C"], ["B", "A"], [0.05, 0.9])
  mask = prior.mask([10.0], [20.0], threshold=0.1)
  np.testing.assert_array_equal(mask, [[True, False, True]])
  p = prior.probabilities([10.0], [20.0])
  np.testing.assert_allclose(p[0, :2], [0.9, 0.05])
  assert np.isnan(p[0, 2])
  np.testing.assert_allclose(prior.weights([10.0], [20.0]), [[0.9, 0.05, 1.0]])


def test_missing_coordinates_mask_nothing():
  prior = _constant_prior(["A", "B"], ["A", "B"], [0.0, 0.0])
  mask = prior.mask([np.nan, 10.0, 5.0], [3.0, np.nan, 5.0])
  np.testing.assert_array_equal(mask, [[True, True], [True, True],
                                       [False, False]])


@pytest.mark.slow  # Trains a range model (tens of seconds).
def test_renamed_label_list_is_matched_by_name_not_index(briefly_trained):
  model, _ = briefly_trained
  labels = list(reversed(model.species_names)) + ["Unknown species"]
  prior = prior_lib.from_range_model(model, labels)
  lat, lon = range_lib.sphere_points(50)
  direct = model.presence(lat, lon)
  via_prior = prior.probabilities(lat, lon)
  np.testing.assert_allclose(via_prior[:, :-1], direct[:, ::-1], rtol=1e-6)
  assert np.isnan(via_prior[:, -1]).all()


def test_lowest_logit_mask():
  logits = np.array([[2.0, -1.0, 0.5]])
  masked = prior_lib.lowest_logit_mask(logits, np.array([[True, True, False]]))
  np.testing.assert_array_equal(masked, [[2.0, -1.0, -1.0]])


def test_csv_observations_and_clear_errors(tmp_path):
  good = tmp_path / "obs.csv"
  with open(good, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["latitude", "longitude", "species"])
    w.writerows([[10, 20, "B b"], ["", "", "A a"], [-5.5, 100, "A a"]])
  obs = range_lib.observations_from_csv(str(good))
  assert obs.species_names == ["A a", "B b"]
  assert obs.species.tolist() == [1, 0, 0]
  assert len(obs.located().species) == 2

  bad = tmp_path / "bad.csv"
  bad.write_text("latitude,longitude,species\n10,abc,A\n")
  with pytest.raises(ValueError, match=r"bad.csv, row 2: .*not numbers"):
    range_lib.observations_from_csv(str(bad))
  out_of_range = tmp_path / "range.csv"
  out_of_range.write_text("latitude,longitude,species\n95,0,A\n")
  with pytest.raises(ValueError, match="range.csv: 1 observations have "
                     "coordinates out of range"):
    range_lib.observations_from_csv(str(out_of_range))
  no_column = tmp_path / "cols.csv"
  no_column.write_text("lat,lon,species\n1,2,A\n")
  with pytest.raises(ValueError, match=r"missing column\(s\)"):
    range_lib.observations_from_csv(str(no_column))


def test_sinr_torch_checkpoint_gives_the_same_outputs(tmp_path):
  torch = pytest.importorskip("torch")
  from torch import nn  # pylint: disable=import-outside-toplevel

  class ResLayer(nn.Module):  # The published SINR layout.

    def __init__(self, width):
      super().__init__()
      self.w1, self.w2 = nn.Linear(width, width), nn.Linear(width, width)
      self.dropout1 = nn.Dropout()

    def forward(self, x):
      return x + torch.relu(self.w2(self.dropout1(torch.relu(self.w1(x)))))

  class ResidualFCNet(nn.Module):

    def __init__(self, num_classes, width=256, depth=4):
      super().__init__()
      self.feats = nn.Sequential(nn.Linear(4, width), nn.ReLU(),
                                 *[ResLayer(width) for _ in range(depth)])
      self.class_emb = nn.Linear(width, num_classes, bias=False)

    def forward(self, x):
      return torch.sigmoid(self.class_emb(self.feats(x)))

  torch.manual_seed(0)
  net = ResidualFCNet(7).eval()
  taxa = [101, 202, 303, 404, 505, 606, 707]
  path = tmp_path / "sinr.pt"
  torch.save({"state_dict": net.state_dict(),
              "params": {"class_to_taxa": taxa, "input_enc": "sin_cos",
                         "num_filts": 256, "depth": 4}}, path)
  model = range_lib.from_sinr_torch(str(path), taxon_names={202: "Bubo bubo"})
  assert model.species_names[:2] == ["101", "Bubo bubo"]
  lat = np.array([0.0, 45.0, -60.0, 89.0])
  lon = np.array([0.0, -120.0, 170.0, 3.0])
  x = torch.tensor(np.asarray(sinr.encode(lat, lon)), dtype=torch.float32)
  with torch.no_grad():
    expected = net(x).numpy()
  np.testing.assert_allclose(model.presence(lat, lon), expected, atol=1e-5)
  # The same file through the generic loader.
  np.testing.assert_allclose(range_lib.load(str(path)).presence(lat, lon),
                             expected, atol=1e-5)
  with pytest.raises(ValueError, match="only 'sin_cos'"):
    torch.save({"state_dict": net.state_dict(),
                "params": {"input_enc": "sin_cos_env"}}, tmp_path / "env.pt")
    range_lib.from_sinr_torch(str(tmp_path / "env.pt"))


def test_synthetic_truth_prior_follows_species_ranges(tmp_path):
  species = [{"name": "A", "ranges": [{"lat": 0.0, "lon": 0.0,
                                       "radius_km": 500.0}]}]
  path = tmp_path / "species_ranges.json"
  path.write_text(json.dumps(species))
  prior = prior_lib.from_range_circles(str(path), ["A", "B"])
  np.testing.assert_array_equal(prior.mask([0.0, 40.0], [0.0, 0.0]),
                                [[True, True], [False, True]])


def test_coverage_summary_and_check(caplog):
  labels = ["A", "B", "C", "D"]
  half = _constant_prior(labels, ["B", "A", "Z"], [0.5, 0.5, 0.5])
  assert half.coverage() == (
      "geo prior covers 2/4 labels (50%); not covered: C, D")
  with caplog.at_level("WARNING"):
    assert half.check_coverage(min_fraction=0.5) == half.coverage()
  assert "below the minimum" not in caplog.text
  with caplog.at_level("WARNING"):
    half.check_coverage(min_fraction=0.75)
  assert "covers 2/4 labels (50%)" in caplog.text
  assert "below the minimum of 75%" in caplog.text

  many = _constant_prior([f"S{i}" for i in range(9)], ["S0"], [1.0])
  assert many.coverage().endswith("not covered: S1, S2, S3, S4, S5 ...")

  # Common names against scientific names: nothing matches.
  none = _constant_prior(["Turdus merula"], ["Blackbird"], [1.0])
  with pytest.raises(ValueError, match=r"covers 0/1 labels.*'Blackbird'.*"
                     r"'Turdus merula'.*exact name"):
    none.check_coverage()


def test_csv_rows_are_numbered_as_a_spreadsheet_shows_them(tmp_path):
  # Saved by a spreadsheet: byte-order mark, CRLF, a blank row (row 4).
  path = tmp_path / "sheet.csv"
  path.write_bytes("\ufefflatitude,longitude,species\r\n"
                   "10,20,Turdus merula\r\n"
                   ",,Turdus merula\r\n"
                   "\r\n"
                   "-5.5,100,Bubo bubo\r\n".encode("utf-8"))
  obs = range_lib.observations_from_csv(str(path))
  assert obs.species_names == ["Bubo bubo", "Turdus merula"]
  assert obs.species.tolist() == [1, 1, 0]
  path.write_bytes(path.read_bytes() + b"12,abc,Bubo bubo\r\n")
  with pytest.raises(ValueError, match=r"sheet.csv, row 6: "):
    range_lib.observations_from_csv(str(path))
  # Out of range after a row with no coordinates: still the sheet's row.
  path.write_bytes("\ufefflatitude,longitude,species\n,,A\n1,2,A\n"
                   "1,200,A\n".encode("utf-8"))
  with pytest.raises(ValueError, match=r"1 observations have coordinates "
                     r"out of range, first latitude 1.0, longitude 200.0 "
                     r"\(row 4\)"):
    range_lib.observations_from_csv(str(path))
