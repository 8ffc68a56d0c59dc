"""Command line: train or evaluate a species classifier or a range model.

    python -m inatsounds_jax.main --config=configs/quickstart.py --workdir=DIR
    python -m inatsounds_jax.main --config=configs/vit.py --workdir=DIR \\
        --config.data_dir=/data/tfds --config.manual_dir=/data/inat_sounds
    python -m inatsounds_jax.main --config=configs/vit.py:tiny --workdir=DIR
    python -m inatsounds_jax.main --config=configs/sinr.py --workdir=DIR
    python -m inatsounds_jax.main --config=... --workdir=DIR --mode=eval

The config's `job` picks what runs ("classifier" unless set). `train`
resumes from DIR when it holds a checkpoint; `eval` evaluates what DIR holds
(for a classifier, its best checkpoint, with every configured evaluation).
Compiled programs are kept in JAX's persistent compilation cache
(--compilation_cache, as the other commands), so a resumed or repeated run
of the same config loads its train step and evaluators from disk.

A problem the user can act on ends the command in one `error:` line naming
the flag, file or folder and what to do, without a traceback (`--verbosity=1`
prints the traceback first): a config flag naming no field (with the field
meant, when there is a likely one) or holding a bad value, a config file that
cannot be loaded, a configuration problem found before any work starts, a
workdir that cannot be written or that another run is using (a run holds its
workdir, `workdir_lock`), a file that cannot be read or written, a workdir
with no intact checkpoint, a run stopped by a non-finite update. SIGTERM
during training saves the current step and exits with status 143; Ctrl-C
stops at once, says where the last saved checkpoint is (the same command
resumes from it) and exits with status 130.
"""

import contextlib
import logging as std_logging
import os
import re
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from inatsounds_jax import checkpoints
from inatsounds_jax import cli
from inatsounds_jax import compilation
from inatsounds_jax import jobs
from inatsounds_jax import registry
from inatsounds_jax import storage
from inatsounds_jax import workdir as workdir_lib
from inatsounds_jax import workdir_lock

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training configuration (a file in configs/).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, "
                               "TensorBoard logs and results go.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "What to do.")
# Several processes (`--config.distributed=True`): on TPU pod slices, Slurm
# and other clusters JAX finds the coordinator and each process's id itself;
# these flags are for launching the processes by hand (one host, or hosts
# JAX cannot detect).
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0's coordinator.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                      "How many processes take part.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None,
                                   "This process's index, 0 .. n-1.")
cli.define_compilation_cache_flag()
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(std_logging.Filter):
  """Drops orbax's and TFDS's per-call INFO lines; our progress stays."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or not any(
        lib in record.pathname for lib in ("/orbax/", "/tensorflow_datasets/"))


# Exit statuses after SIGTERM and Ctrl-C (SIGINT): the shell's convention,
# 128 + the signal's number.
_PREEMPTED_STATUS = 143
_INTERRUPTED_STATUS = 130


# -- One line per problem ------------------------------------------------------

def _first_line(text: str) -> str:
  return text.strip().split("\n", 1)[0]


def _innermost(error: BaseException) -> BaseException:
  """The exception at the start of `error`'s chain (`from` or during)."""
  while error.__cause__ or error.__context__:
    error = error.__cause__ or error.__context__
  return error


def _config_arg(argv: list[str]) -> str:
  """`--config=VALUE` as given (for messages about the config file)."""
  for i, arg in enumerate(argv[1:], 1):
    if re.match(r"-{1,2}config(=|$)", arg):
      value = (arg.partition("=")[2] if "=" in arg
               else argv[i + 1] if i + 1 < len(argv) else "")
      return f"--config={value}"
  return "--config"


def _unknown_field_message(error: LookupError | AttributeError,
                           argv: list[str]) -> str:
  """A `--config.a.b=...` naming no field of the config, in one line.

  ml_collections raises a KeyError (in an AttributeError for a top-level
  field) whose text is the field and, when a field is spelled alike, its
  "Did you mean"; the flag is the override holding that field.
  """
  text = error
  while isinstance(text, BaseException) and text.args:
    text = text.args[0]
  field, _, hint = str(text).partition("\n")
  field = field.strip("'\"")
  for arg in argv[1:]:
    no, name = re.match(r"-{0,2}(no)?([^=]*)", arg).groups()
    parts = name.split(".")
    if parts[0] == "config" and field in parts[1:]:
      break
  else:
    return f"{type(error).__name__}: {_first_line(str(text))}"
  name = (no or "") + name
  meant = re.search(r'Did you mean "([^"]+)"', hint)
  if meant:
    parts[parts.index(field, 1)] = meant.group(1)
    todo = f"did you mean --{no or ''}{'.'.join(parts)}?"
  else:
    config_file = (_config_arg(argv).partition("=")[2].partition(":")[0]
                   or "the config file")
    todo = (f"see {config_file} and inatsounds_jax/config_defaults.py for "
            "its fields")
  return f"--{name}: the config has no field {field!r}; {todo}"


def _flag_error_message(error: flags.Error) -> str:
  """absl's message, or for a config file that raised, the flag and the
  config file's own error (absl embeds its traceback in the message)."""
  message = str(error).strip()
  if "\n" not in message:
    return message
  cause = _innermost(error)
  head = _first_line(message).replace(
      "Error whilst parsing config file:", "").rstrip(": ")
  reason = (str(cause) if isinstance(cause, ValueError)
            else f"{type(cause).__name__}: {cause}")
  return f"{head}: {_first_line(reason)}"


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, each mistake in one `error:` line.

  absl reports most bad flags in two lines, but lets an override naming no
  field of the config (ml_collections' KeyError) escape as a 55-line
  traceback, and a config file that cannot be loaded only fails where the
  config is first read; both end here, naming the flag.
  """
  try:
    remaining = flags.FLAGS(argv)
    _CONFIG.value.get("job")  # A config file that failed to load raises.
  except flags.Error as e:
    cli.fail(_flag_error_message(e), e, argv=argv)
  except (LookupError, AttributeError) as e:
    cli.fail(_unknown_field_message(e, argv), e, argv=argv)
  except OSError as e:  # ml_collections' "Failed loading config file".
    cli.fail(f"{_config_arg(argv)}: cannot load it: "
             f"{str(e).strip().splitlines()[-1].strip()}", e, argv=argv)
  return remaining


def _os_error_message(e: OSError) -> str:
  if e.filename is None:
    return _first_line(str(e))
  where = (f"{e.filename} -> {e.filename2}" if e.filename2 is not None
           else f"{e.filename}")
  return f"{where}: {e.strerror or _first_line(str(e))}"


def _interrupted_message(workdir: str) -> str:
  """What Ctrl-C left: where training resumes from, if from anywhere."""
  if _MODE.value != "train":
    return (f"evaluation interrupted (Ctrl-C); run the same command again "
            f"to evaluate {workdir}")
  folder = workdir_lib.path(workdir, workdir_lib.CHECKPOINTS_DIR)
  try:
    steps = ([int(p.name) for p in folder.iterdir() if p.name.isdigit()]
             if folder.exists() else [])
  except Exception:  # pylint: disable=broad-except
    steps = None
  if steps is None:
    return (f"training interrupted (Ctrl-C); run the same command again to "
            f"resume from the last checkpoint saved in {folder}, if any")
  if not steps:
    return ("training interrupted (Ctrl-C) before its first checkpoint; run "
            "the same command again to start it over")
  return (f"training interrupted (Ctrl-C); the last saved checkpoint (step "
          f"{max(steps)}) is in {folder}: run the same command again to "
          "resume from it")


# -- Processes and the workdir -------------------------------------------------

def initialize_processes(config) -> None:
  """`jax.distributed.initialize` for a `distributed` config, before any
  other JAX call; the flags (when given) say where process 0 listens."""
  if not config.get("distributed"):
    return
  from inatsounds_jax import processes  # pylint: disable=import-outside-toplevel
  processes.initialize(_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                       process_id=_PROCESS_ID.value)


@contextlib.contextmanager
def held_workdir(config, workdir: str, what: str):
  """Holds `workdir` for this run (`workdir_lock.hold`), before any work.

  A second run into the same workdir is refused instead of interleaving
  its checkpoints with this one's. In a multi-process run process 0 holds
  it for all (one lock file per run, where only process 0 writes anything
  but checkpoint shards) and tells the others whether it could, so that a
  refused run stops in every process at once instead of leaving the
  others waiting for process 0.

  Raises:
    workdir_lock.FolderInUseError, workdir_lock.FolderNotWritableError.
  """
  if not config.get("distributed"):
    with workdir_lock.hold(workdir, what, "--workdir"):
      yield
    return
  import jax  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  with contextlib.ExitStack() as stack:
    refused = None
    if jax.process_index() == 0:
      try:
        stack.enter_context(workdir_lock.hold(workdir, what, "--workdir"))
      except registry.ConfigError as e:
        refused = e
    if jax.process_count() > 1:
      stopped = bool(multihost_utils.broadcast_one_to_all(
          np.int32(refused is not None)))
      if stopped and refused is None:
        raise registry.ConfigError(
            f"process 0 could not hold {workdir}: see its log")
    if refused is not None:
      raise refused
    yield


def _stop_after_another_process_failed(error: Exception) -> None:
  """Exits at once when a collective with the other processes failed.

  A process that dies (killed, out of memory, a bug) breaks the collectives
  of the others; without this they would wait out JAX's shutdown barrier
  (its heartbeat timeout) and then abort with a long C++ stack trace.
  """
  import jax  # pylint: disable=import-outside-toplevel
  if not (jax.distributed.is_initialized() and jax.process_count() > 1 and
          isinstance(error, jax.errors.JaxRuntimeError)):
    return
  message = str(error).strip().splitlines()[0][:300]
  print(f"error: process {jax.process_index()} of {jax.process_count()}: an "
        f"operation with the other processes failed ({message}); another "
        "process has probably stopped: see its log. This process stops too; "
        "start all processes again to resume from the last checkpoint.",
        file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(1)  # pylint: disable=protected-access


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # TF is only the input pipeline: keep its logs and any GPU away from JAX.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  config, workdir = _CONFIG.value, _WORKDIR.value
  initialize_processes(config)
  compilation.use_persistent_cache(flags.FLAGS.compilation_cache)
  try:
    with held_workdir(config, workdir,
                      "training" if _MODE.value == "train" else "evaluation"):
      job = jobs.load_job(config.get("job", "classifier"))
      logging.info("Config:\n%s", config)
      if _MODE.value == "train":
        results = job.train_and_evaluate(config, workdir)
      else:
        results = job.evaluate_checkpoint(config, workdir)
  except (registry.ConfigError, checkpoints.DamagedCheckpointError,
          FloatingPointError) as e:
    # What went wrong and what to do is in the message; a traceback adds
    # nothing for the user.
    cli.fail(str(e), e)
  except OSError as e:
    cli.fail(_os_error_message(e), e)
  except checkpoints.Preempted as e:
    logging.warning("%s", e)
    sys.exit(_PREEMPTED_STATUS)
  except KeyboardInterrupt as e:
    cli.stop(_interrupted_message(workdir), e, _INTERRUPTED_STATUS)
  except Exception as e:  # pylint: disable=broad-except
    _stop_after_another_process_failed(e)
    raise
  print(job.format_results(results))
  print(f"Everything else (results JSON, plots, checkpoints, TensorBoard): "
        f"{storage.resolve(workdir)}")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
