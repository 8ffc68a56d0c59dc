"""Workdir files appear whole or not at all (`storage.write_whole`)."""

from etils import epath
import numpy as np
import pytest

from inatsounds_jax import curate
from inatsounds_jax import plots
from inatsounds_jax import scored_rows
from inatsounds_jax import storage


class Killed(Exception):
  """Stands for the process being killed part way through a write."""


@pytest.fixture
def kill_writes_half_way(monkeypatch):
  """Every file opened through epath stores the first half of the first
  data written to it, then dies."""
  path_type = type(epath.Path("/"))
  original_open = path_type.open

  class HalfFile:
    def __init__(self, file):
      self._file = file

    def write(self, data):
      self._file.write(data[:len(data) // 2])
      self._file.flush()
      raise Killed()

    def __getattr__(self, name):
      return getattr(self._file, name)

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      return self._file.__exit__(*exc)

  monkeypatch.setattr(path_type, "open", lambda self, *args, **kwargs:
                      HalfFile(original_open(self, *args, **kwargs)))


def _rows(value: float) -> dict[str, scored_rows.ScoredRows]:
  return {"mean": scored_rows.ScoredRows(
      module="inatsounds_jax.evaluators.file_level", key="mean/no_prior",
      recording=np.array(["a", "b"]), scores=np.full((2, 3), value),
      truth=np.array([0, 2]))}


def _scores(value: float) -> dict[str, np.ndarray]:
  columns = {name: np.array([0, 1]) for name in curate.COLUMNS}
  columns["recording_id"] = np.array([b"a", b"b"])
  columns["score"] = np.array([value, value / 2], np.float32)
  return columns


def _save_figure(path: str, title: str) -> None:
  fig = plots.pyplot().figure()
  fig.suptitle(title)
  plots.save(fig, path)


# (writer, value before, value written when killed, reader)
WRITERS = {
    "json": (storage.write_json, {"top1": 0.5}, {"top1": 0.9},
             storage.read_json),
    "rows": (scored_rows.write_rows, _rows(0.5), _rows(0.9),
             lambda p: float(scored_rows.read_rows(p)["mean/no_prior"]
                             .scores[0, 0])),
    "scores csv": (lambda p, v: curate.Scores(v).write(p), _scores(0.5),
                   _scores(0.9), lambda p: epath.Path(p).read_text()),
    "figure": (_save_figure, "before", "after",
               lambda p: epath.Path(p).read_bytes()),
}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_a_write_killed_part_way_leaves_the_previous_file_whole(
    name, tmp_path, request):
  write, before, after, read = WRITERS[name]
  path = str(tmp_path / "out" / name)
  write(path, before)
  previous = read(path)
  request.getfixturevalue("kill_writes_half_way")
  with pytest.raises(Killed):
    write(path, after)
  assert read(path) == previous


def test_write_whole_makes_the_folder_and_leaves_no_partial_file(tmp_path):
  path = tmp_path / "a" / "b" / "notes.txt"
  storage.write_whole(path, "first")
  storage.write_whole(path, b"second")
  assert path.read_text() == "second"
  assert sorted(p.name for p in path.parent.iterdir()) == ["notes.txt"]


def test_a_partial_file_left_by_a_killed_write_is_replaced_by_the_next(
    tmp_path, monkeypatch):
  path = tmp_path / "eval_results.json"
  with monkeypatch.context() as patched:
    path_type = type(epath.Path("/"))
    patched.setattr(path_type, "replace",
                    lambda self, target: (_ for _ in ()).throw(Killed()))
    with pytest.raises(Killed):
      storage.write_json(path, {"step": 1})
  assert not path.exists()  # Nothing under the name until complete.
  storage.write_json(path, {"step": 2})
  assert storage.read_json(path) == {"step": 2}
  assert not (tmp_path / ("eval_results.json" + storage.PARTIAL_SUFFIX)
              ).exists()


def test_a_write_that_raises_keeps_the_previous_file_and_no_partial(
    tmp_path):
  path = tmp_path / "scores.csv"
  storage.write_whole(path, "before")
  with pytest.raises(ValueError):
    with storage.writing_whole(path) as f:
      f.write("half of the rows")
      raise ValueError("a bad row")
  assert path.read_text() == "before"
  assert [p.name for p in tmp_path.iterdir()] == ["scores.csv"]
