"""Weight files that are not weight files fail naming the file."""

import numpy as np
import pytest

from inatsounds_jax.models import convert


def _raises_naming(path, *fragments):
  with pytest.raises(convert.CheckpointFileError) as e:
    convert.load_state_dict(str(path))
  message = str(e.value)
  assert message.startswith(str(path))
  assert "expected a state dict" in message
  for fragment in fragments:
    assert fragment in message, message
  assert "weights_only=False" not in message
  assert "file an issue" not in message


def test_safetensors_round_trip_and_broken_file(tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  good = tmp_path / "w.safetensors"
  save_file({"module.fc.weight": np.ones((2, 3), np.float32)}, str(good))
  state = convert.load_state_dict(str(good))
  np.testing.assert_array_equal(state["fc.weight"], np.ones((2, 3)))
  broken = tmp_path / "broken.safetensors"
  broken.write_bytes(good.read_bytes()[:20])
  _raises_naming(broken, "not a readable .safetensors file")


def test_text_file_is_not_a_checkpoint(tmp_path):
  path = tmp_path / "resnet50.pth"
  path.write_text("<html>404 Not Found</html>\n")
  _raises_naming(path, "not a PyTorch checkpoint", "<html>")


def test_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nothing.pth: no such file"):
    convert.load_state_dict(str(tmp_path / "nothing.pth"))


def test_torch_files_that_hold_something_else(tmp_path):
  torch = pytest.importorskip("torch")
  model = torch.nn.Linear(3, 2)
  good = tmp_path / "good.pth"
  torch.save({"state_dict": model.state_dict(), "epoch": 3}, good)
  assert set(convert.load_state_dict(str(good))) == {"weight", "bias"}

  pickled_model = tmp_path / "model.pth"
  torch.save(model, pickled_model)
  _raises_naming(pickled_model, "pickled model", "state_dict()")
  a_list = tmp_path / "list.pth"
  torch.save([1, 2, 3], a_list)
  _raises_naming(a_list, "holds a list, not a state dict")
  mixed = tmp_path / "mixed.pth"
  torch.save({"weight": torch.zeros(2), "note": "hello"}, mixed)
  _raises_naming(mixed, "entries that are not tensors: ['note']")
  cut = tmp_path / "cut.pth"
  cut.write_bytes(good.read_bytes()[:200])
  _raises_naming(cut, "damaged or unreadable PyTorch checkpoint")


def test_from_torch_reports_the_file(tmp_path):
  path = tmp_path / "weights.pth"
  path.write_text("not weights")
  with pytest.raises(convert.CheckpointFileError, match="weights.pth: not a "
                     "PyTorch checkpoint"):
    convert.from_torch("resnet18", str(path), num_classes=3)
