"""Shared fixtures: a small synthetic corpus and builds from it."""

import os
import tempfile

# Tests see 8 fake CPU devices (sharding tests) and keep TF off any GPU.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# The tests compile far more than they compute (tiny batches, a few steps):
# without LLVM's optimisations XLA compiles a train step 2-3x faster, and
# programs compiled again (a resumed run, the same model in another test,
# a subprocess) come from a cache shared by the test processes. Benchmarks
# and users keep XLA's defaults.
os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), "inatsounds_jax_tests_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# torchvision imports Triton's native library, which segfaults when it loads
# after TensorFlow's and XLA's; loaded first, all coexist. Only the model
# parity tests use torch, and they skip when it is absent.
try:
  import timm  # noqa: F401
  import torchvision  # noqa: F401
except ImportError:
  pass

import pytest  # pylint: disable=g-import-not-at-top

from inatsounds_jax import data  # pylint: disable=g-import-not-at-top
from inatsounds_jax import synthetic  # pylint: disable=g-import-not-at-top

SMALL = synthetic.CorpusConfig(num_species=8, num_recordings=48, seed=3,
                               median_duration_s=2.0, max_duration_s=30.0)


def pytest_collection_modifyitems(items):
  """Runs the slow tests first: with `pytest -n 2` the test processes then
  end on short tests together, instead of one waiting on a long one."""
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory):
  """A finished small corpus; tests must not modify it (copy first)."""
  out = str(tmp_path_factory.mktemp("corpus"))
  synthetic.generate(out, SMALL, num_workers=1)
  return out


def build(manual_dir, data_dir, **fields):
  """Prepares the `full` config from `manual_dir` into `data_dir`."""
  return data.prepare("full", data_dir=str(data_dir),
                      manual_dir=str(manual_dir), **fields)


@pytest.fixture(scope="session")
def small_dataset(small_corpus, tmp_path_factory):
  """The small corpus built into TFDS records (from its extracted folders)."""
  return build(small_corpus, tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """The TFDS data dir the end-to-end tests share.

  Jobs prepare the tiny synthetic set (`config_defaults.TINY_DATASET`) into
  it on first use; later runs in the same test process find it prepared.
  Tests must not modify what is in it.
  """
  return str(tmp_path_factory.mktemp("tfds_shared"))
