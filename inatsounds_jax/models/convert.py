"""Import of torchvision / timm weights into the Flax backbones.

    variables = from_torch("resnet50", "resnet50-imagenet.pth", num_classes=50)

Each backbone names its layers after the PyTorch module path (dots become
underscores), so conversion is: rename torchvision ViT modules to timm's
names, then move every tensor to its Flax leaf with the layout change
(conv [O, I, kh, kw] -> [kh, kw, I, O], linear [O, I] -> [I, O], batch-norm
weight/bias/running stats -> scale/bias/mean/var). Every Flax leaf must be
filled exactly once and every tensor used, or the error lists what is off.

AudioMAE (Huang et al. 2022) and Bird-MAE (Rauch et al. 2025) checkpoints
were trained on Kaldi fbank features (torchaudio's `kaldi.fbank`: 25 ms
Hann frames every 10 ms, DC offset removed, pre-emphasis 0.97, power
spectrum, 128 triangular mel bands from 20 Hz to the Nyquist frequency,
natural log) of 16 kHz audio (AudioMAE: 1024 frames, 10.24 s) or 32 kHz
audio (Bird-MAE: 512 frames, 5.12 s), laid out [time, mel] with the lowest
band first and normalised as (fbank - mean) / (2 std). Our frontend
(`frontend.py`) makes [mel, time] images with the highest band in row 0:
20 log10 of mel-summed magnitudes of 22,050 Hz audio, 50 Hz to 11,025 Hz,
a frame every 128 samples (5.8 ms), mapped onto 0..255.

What the import matches:
- the orientation (`from_torch(time_major=True)`): patch kernels and
  position embeddings are transposed and reversed in frequency, so the
  imported model computes on our image of a sound the patch embeddings the
  original computes on its layout of it (tests/test_mae_import.py);
- the normalisation, as the model image's mean and std
  (`input_normalization`; configs/mae_finetune.py:audiomae or :birdmae set
  it with the patch grid and the layout): either the original's fine-tuning
  convention on our data (mean 0, std 1/2 of the target set's images) or
  its pretraining constants converted to our units.
What it does not match: what a row and a column are. The bands cover other
frequencies (ours 50 Hz to 11.025 kHz; AudioMAE's 20 Hz to 8 kHz; Bird-MAE's
20 Hz to 16 kHz), a frame is 5.8 ms instead of 10 ms (a 512-frame window is
2.97 s; position embeddings are resampled to our grid), a band sums
magnitudes instead of power, and there is no pre-emphasis (which darkens
the originals' low bands). Fine-tuning adapts to these; frozen features
(linear probes) meet them as they are.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
from collections.abc import Mapping, Sequence

import flax
import jax
import numpy as np

from inatsounds_jax import frontend as frontend_lib
from inatsounds_jax import models as models_lib
from inatsounds_jax.models import image as image_lib
from inatsounds_jax.models import vit as vit_lib

# (stem conv, head) module names per family.
_STEM_AND_HEAD = {"resnet": ("conv1", "fc"),
                  "mobilenet": ("features_0_0", "classifier_3"),
                  "vit": ("patch_embed_proj", "head")}
# torchvision's ViT module names -> timm's (which the Flax ViT uses).
_TORCHVISION_VIT = (
    (r"^conv_proj\.", "patch_embed.proj."),
    (r"^class_token$", "cls_token"),
    (r"^encoder\.pos_embedding$", "pos_embed"),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.ln_1\.", r"blocks.\1.norm1."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.ln_2\.", r"blocks.\1.norm2."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.self_attention\.in_proj_",
     r"blocks.\1.attn.qkv."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.self_attention\.out_proj\.",
     r"blocks.\1.attn.proj."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.mlp\.0\.", r"blocks.\1.mlp.fc1."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.mlp\.3\.", r"blocks.\1.mlp.fc2."),
    (r"^encoder\.ln\.", "norm."),
    (r"^heads\.head\.", "head."),
)
_IGNORED = re.compile(r"num_batches_tracked$")
# Backbone options that change which parameters a model has.
SHAPING_OPTIONS = ("global_pool", "class_token")


@dataclasses.dataclass(frozen=True)
class KaldiFbankSource:
  """The input of an AudioMAE-style checkpoint (the module docstring).

  Attributes:
    sample_rate: of its audio, Hz.
    frames: time frames of its input (10 ms apart).
    mean, std: of its fbank values over its pretraining data.
    statistics: what its own fine-tuning normalised a dataset with:
      "dataset" (that dataset's own statistics) or "source" (`mean`, `std`).
    mel_bins: bands of its input.
  """
  sample_rate: int
  frames: int
  mean: float
  std: float
  statistics: str
  mel_bins: int = 128

  @property
  def grid(self) -> tuple[int, int]:
    """Its patch grid, (time, mel) patches."""
    return self.frames // vit_lib.PATCH, self.mel_bins // vit_lib.PATCH

  @property
  def window_sum(self) -> float:
    """Sum of its 25 ms window: Kaldi's "hanning" is the symmetric Hann
    window, which over N samples sums to (N - 1) / 2."""
    return (self.sample_rate * 25 // 1000 - 1) / 2


MAE_SOURCES = {
    # Huang et al. 2022: AudioSet's statistics; its fine-tuning normalises
    # ESC-50 and Speech Commands by their own.
    "audiomae": KaldiFbankSource(16_000, 1024, -4.2677393, 4.5689974,
                                 "dataset"),
    # Rauch et al. 2025: BirdSet's statistics, for every downstream set.
    "birdmae": KaldiFbankSource(32_000, 512, -7.2, 4.43, "source"),
}
STATISTICS = ("dataset", "source")


def input_normalization(source: str,
                        frontend_config: frontend_lib.FrontendConfig,
                        statistics: str = "") -> tuple[float, float]:
  """`ImageConfig` (mean, std) with which a converted `source` checkpoint
  (a key of `MAE_SOURCES`) sees our images as its original saw its input,
  (fbank - mean) / (2 std).

  `statistics` ("" = the source's own fine-tuning convention):
  - "dataset": the target data's statistics, ImageConfig's defaults (the
    iNatSounds spectrogram's), with the deviation doubled: the model's
    inputs have mean 0 and deviation 1/2 on our data, as the original's on
    its own.
  - "source": the checkpoint's pretraining constants in our units. A pixel
    is `frontend_config.pixels_to_db` dB of a [-1, 1] signal, so natural-log
    power is dB ln(10) / 10; Kaldi does not normalise its window, so it
    reads a sinusoid of amplitude A at A sum(window) / 2 where ours reads
    A: 2 ln(sum(window) / 2) is added. Approximate: our bands sum
    magnitudes, so a window's main lobe or a noise band reads higher than
    in power, and the original's pre-emphasis is not applied.

  Raises:
    ValueError: an unknown source or statistics.
  """
  if source not in MAE_SOURCES:
    raise ValueError(f"unknown MAE source {source!r}; choose one of "
                     f"{sorted(MAE_SOURCES)}")
  spec = MAE_SOURCES[source]
  statistics = statistics or spec.statistics
  if statistics not in STATISTICS:
    raise ValueError(f"statistics {statistics!r}: choose one of "
                     f"{STATISTICS}")
  if statistics == "dataset":
    ours = image_lib.ImageConfig()
    return float(ours.mean), 2.0 * float(ours.std)

  def fbank(pixels: float) -> float:
    db_full_scale = (frontend_config.pixels_to_db(pixels) -
                     20.0 * np.log10(frontend_config.waveform_scale))
    return float(np.log(10.0) / 10.0 * db_full_scale +
                 2.0 * np.log(spec.window_sum / 2.0))

  # fbank is linear in the 0..1 image u = pixels / 255.
  lowest, span = fbank(0.0), fbank(255.0) - fbank(0.0)
  return (spec.mean - lowest) / span, 2.0 * spec.std / span


class ConversionError(ValueError):
  """The state dict does not fit the architecture; says what is off."""


def family(name: str) -> str:
  return name.split("_")[0] if not name.startswith("resnet") else "resnet"


class CheckpointFileError(ConversionError):
  """The file is not a weights file; says which file and what was expected."""


_EXPECTED = ("expected a state dict (parameter name -> tensor) saved with "
             "torch.save, or a .safetensors file")
# How torch.save files start: a zip container (PyTorch >= 1.6) or a pickle
# (the legacy format, protocol 2 and up).
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")


def _load_torch_file(path: str):
  """`torch.load(weights_only=True)`, failing with what is wrong with `path`."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"reading {path} needs torch; or convert it to "
                      ".safetensors first") from e
  with open(path, "rb") as f:
    head = f.read(16)
  if not head.startswith(_TORCH_MAGIC):
    raise CheckpointFileError(
        f"{path}: not a PyTorch checkpoint (it starts with {head!r}); "
        + _EXPECTED)
  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError:
    # torch's own message suggests weights_only=False, which runs whatever
    # code the file holds: not an option for a weights file.
    raise CheckpointFileError(
        f"{path}: holds Python objects other than tensors and plain "
        "containers (e.g. a whole pickled model), which are not loaded "
        "because unpickling them can run code; save model.state_dict() "
        f"instead; {_EXPECTED}") from None
  except Exception as e:  # pylint: disable=broad-except
    # A damaged file fails anywhere in torch's reader, with any exception.
    raise CheckpointFileError(
        f"{path}: damaged or unreadable PyTorch checkpoint "
        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
        + _EXPECTED) from None


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Tensors from `.safetensors` (no torch needed) or `.pth` / `.pt`.

  Training checkpoints that wrap the weights (`{"state_dict": ...}`,
  `{"model": ...}`) and DataParallel's `module.` prefix are unwrapped.

  Raises:
    FileNotFoundError: no file at `path`.
    CheckpointFileError: the file is not a weights file (not a torch.save or
      safetensors file, damaged, a pickled model, or not name -> tensor);
      the message names the file and what was expected.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such file; {_EXPECTED}")
  if path.endswith(".safetensors"):
    from safetensors import SafetensorError  # pylint: disable=import-outside-toplevel
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
    try:
      state = load_file(path)
    except SafetensorError as e:
      raise CheckpointFileError(f"{path}: not a readable .safetensors file "
                                f"({e}); {_EXPECTED}") from None
  else:
    state = _load_torch_file(path)
    for key in ("state_dict", "model", "model_state_dict"):
      if isinstance(state, Mapping) and key in state and isinstance(
          state[key], Mapping):
        state = state[key]
  if not isinstance(state, Mapping):
    raise CheckpointFileError(
        f"{path}: holds a {type(state).__name__}, not a state dict; "
        + _EXPECTED)
  not_tensors = [k for k, v in state.items()
                 if not isinstance(k, str) or not (
                     hasattr(v, "detach") or isinstance(v, np.ndarray))]
  if not_tensors:
    raise CheckpointFileError(
        f"{path}: entries that are not tensors: {not_tensors[:8]}"
        f"{' ...' if len(not_tensors) > 8 else ''}; " + _EXPECTED)
  return {re.sub(r"^module\.", "", k): _to_numpy(v) for k, v in state.items()}


def _to_numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):  # A torch tensor.
    return value.detach().cpu().float().numpy()
  return np.asarray(value, np.float32)


def _flax_name(torch_module: str) -> str:
  return torch_module.replace(".", "_")


def from_torch(name: str, state_dict: Mapping | str,
               num_classes: int | None = None,
               head_classes: Sequence[int] | None = None,
               in_channels: int = 3, image_size=(224, 224),
               head_bias_init: float = 0.0, backbone_options=None,
               source_grid=None, time_major: bool = False) -> dict:
  """Flax variables (`params`, and `batch_stats` for CNNs) for model `name`.

  Args:
    name: a registry name (`resnet50`, `mobilenet_v3_large`, `vit_b16`, ...).
    state_dict: torchvision or timm state dict (tensors or arrays), or a path
      to `.pth` / `.pt` / `.safetensors`.
    num_classes: head size; None keeps the checkpoint's head. A different
      size replaces the head with a zero-initialised one (bias
      `head_bias_init`), unless `head_classes` picks rows of the old head.
    head_classes: rows of the checkpoint's head to keep, in order (e.g. the
      checkpoint classes matching a label list).
    in_channels: 1 folds a 3-channel stem into one channel by summing.
    image_size: ViT input size; position embeddings are resampled to it.
    head_bias_init: bias of a replaced head.
    backbone_options: options that shape the model's parameters (ViT:
      `global_pool`, `class_token`).
    source_grid: (rows, cols) of a ViT checkpoint's patch grid; None =
      square.
    time_major: the checkpoint's images are laid out as Kaldi's fbank,
      [time, mel] with the lowest band first (AudioMAE's 1024 x 128 input,
      Bird-MAE's 512 x 128; ours are [mel, time] with the highest band
      first): patch kernels and position embeddings are transposed and
      reversed in frequency. Its input normalisation is the model's
      (`input_normalization`).

  Masked-autoencoder checkpoints (AudioMAE, Bird-MAE in timm layout) load
  too: their decoder and mask token are dropped, a missing head is created
  (zeros, bias `head_bias_init`), and with average pooling a final `norm`
  without `fc_norm` is dropped, `fc_norm` starting fresh (AudioMAE's
  fine-tuning). Position embeddings without a class token fit a ViT with
  `class_token=False`.
  """
  if isinstance(state_dict, (str, os.PathLike)):
    state_dict = load_state_dict(os.fspath(state_dict))
  state = {k: _to_numpy(v) for k, v in state_dict.items()
           if not _IGNORED.search(k)}
  fam = family(name)
  if fam == "vit" and any(k.startswith("encoder.layers.") for k in state):
    state = _rename(state, _TORCHVISION_VIT)
  backbone_options = dict(backbone_options or {})
  if fam == "vit":
    state = _encoder_only(state, backbone_options.get("global_pool",
                                                      "token"))
  stem, head = _STEM_AND_HEAD[fam]
  head_weight = state.get(f"{head.replace('_', '.')}.weight")
  old_classes = None if head_weight is None else head_weight.shape[0]
  if old_classes is None and num_classes is None:
    raise ConversionError("the checkpoint has no head: give num_classes")

  if head_classes is not None:
    rows = np.asarray(head_classes)
    for leaf in ("weight", "bias"):
      key = f"{head.replace('_', '.')}.{leaf}"
      state[key] = state[key][rows]
    old_classes = len(rows)
  num_classes = old_classes if num_classes is None else num_classes
  replace_head = num_classes != old_classes
  options = ({"image_size": tuple(image_size), **backbone_options}
             if fam == "vit" else {})
  model = models_lib.create(name, num_classes, **options)
  target = jax.eval_shape(lambda: models_lib.init(
      model, jax.random.PRNGKey(0), image_size, in_channels))
  flat_target = flax.traverse_util.flatten_dict(
      flax.core.unfreeze(target), sep="/")

  out: dict[str, np.ndarray] = {}
  unused = []
  for key, value in state.items():
    module, _, leaf = key.rpartition(".")
    module_name = _flax_name(module) if module else ""
    if module_name == head and replace_head:
      continue
    placed = _place(module_name, leaf, value, flat_target)
    if placed is None:
      unused.append(key)
      continue
    path, array = placed
    if path in out:
      raise ConversionError(f"{key} maps onto {path} twice")
    out[path] = array

  if fam == "vit":
    tokens = out["params/pos_embed"].shape[1] - (
        "params/cls_token" in out)
    side = int(round(np.sqrt(tokens)))
    grid = tuple(source_grid or (side, side))
    pos_embed = out["params/pos_embed"]
    if time_major:
      pos_embed = _highest_band_first(pos_embed, grid)
    out["params/pos_embed"] = vit_lib.resample_pos_embed(
        pos_embed, grid, vit_lib.grid_size(image_size), transpose=time_major)
    if time_major:
      # [kh, kw, I, O]: kh ran over time, kw over mel from the lowest band;
      # ours: kh over mel from the highest band, kw over time.
      out[f"params/{stem}/kernel"] = out[f"params/{stem}/kernel"].transpose(
          1, 0, 2, 3)[::-1]
    for leaf, fill in (("scale", 1.0), ("bias", 0.0)):
      path = f"params/fc_norm/{leaf}"
      if path in flat_target and path not in out:
        out[path] = np.full(flat_target[path].shape, fill, np.float32)
  kernel = f"params/{stem}/kernel"
  if in_channels != out[kernel].shape[2]:
    if in_channels != 1:
      raise ConversionError(f"can fold the stem to 1 channel, not "
                            f"{in_channels}")
    out[kernel] = out[kernel].sum(axis=2, keepdims=True)
  if replace_head:
    out[f"params/{head}/kernel"] = np.zeros(
        flat_target[f"params/{head}/kernel"].shape, np.float32)
    out[f"params/{head}/bias"] = np.full((num_classes,), head_bias_init,
                                         np.float32)

  missing = sorted(set(flat_target) - set(out))
  wrong = sorted(f"{p}: checkpoint {out[p].shape} vs model "
                 f"{flat_target[p].shape}" for p in out
                 if p in flat_target and out[p].shape != flat_target[p].shape)
  if missing or unused or wrong:
    raise ConversionError(
        f"state dict does not fit {name}: "
        + (f"model leaves not in checkpoint {missing[:8]}"
           f"{' ...' if len(missing) > 8 else ''}; " if missing else "")
        + (f"checkpoint tensors with no place {unused[:8]}"
           f"{' ...' if len(unused) > 8 else ''}; " if unused else "")
        + (f"shape mismatches {wrong[:8]}" if wrong else ""))
  return flax.traverse_util.unflatten_dict(
      {k: np.asarray(v, np.float32) for k, v in out.items()}, sep="/")


def _highest_band_first(pos_embed: np.ndarray, grid) -> np.ndarray:
  """Position embeddings `[1, c + time * mel, D]` of a Kaldi-layout grid
  (`grid` = (time, mel) patches, lowest band first) with the mel axis
  reversed, so the highest band comes first as in our images."""
  prefix = pos_embed.shape[1] - grid[0] * grid[1]
  patches = pos_embed[:, prefix:].reshape((1,) + tuple(grid) + (-1,))
  return np.concatenate(
      [pos_embed[:, :prefix],
       patches[:, :, ::-1].reshape(1, -1, pos_embed.shape[-1])], axis=1)


def _encoder_only(state: dict, global_pool: str) -> dict:
  """A ViT state without an MAE's decoder and mask token; with average
  pooling, without a final `norm` the checkpoint has instead of `fc_norm`."""
  drop_norm = global_pool == "avg" and not any(
      k.startswith("fc_norm.") for k in state)
  return {k: v for k, v in state.items()
          if not (k.startswith("decoder") or k == "mask_token" or
                  (drop_norm and k.startswith("norm.")))}


def _rename(state: dict, rules) -> dict:
  out = {}
  for key, value in state.items():
    for pattern, repl in rules:
      key = re.sub(pattern, repl, key)
    out[key] = value
  return out


def _place(module: str, leaf: str, value: np.ndarray, target: dict):
  """(flax path, array in Flax layout) for one tensor, or None."""
  if not module:  # A bare parameter (cls_token, pos_embed).
    path = f"params/{leaf}"
    return (path, value) if path in target else None
  params = f"params/{module}"
  if f"{params}/kernel" in target:  # Conv or dense.
    if leaf == "weight":
      kernel = (value.transpose(2, 3, 1, 0) if value.ndim == 4
                else value.T)
      return f"{params}/kernel", kernel
    if leaf == "bias":
      return f"{params}/bias", value
    return None
  if f"{params}/scale" in target:  # Batch or layer norm.
    names = {"weight": f"{params}/scale", "bias": f"{params}/bias",
             "running_mean": f"batch_stats/{module}/mean",
             "running_var": f"batch_stats/{module}/var"}
    return (names[leaf], value) if leaf in names else None
  return None
