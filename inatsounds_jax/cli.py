"""What the library's command lines share: one line per problem.

A problem a user can act on (a bad flag, a file that is wrong, a folder in
use) ends a command in one `error:` line that names the flag, file or folder
and says what to do; its traceback, which helps only whoever debugs the
library, is printed before that line when `--verbosity` (absl's flag) is 1
or more.

Commands that load a model start with `start_command`: absl's logging
quiet, TensorFlow (where something imported it) kept off the GPUs, and
JAX's persistent compilation cache on (`--compilation_cache`,
`compilation.use_persistent_cache`).
"""

from __future__ import annotations

import re
import sys
import traceback
from typing import NoReturn

from absl import flags
from absl import logging

from inatsounds_jax import compilation
from inatsounds_jax import sphere


def traceback_wanted(argv: list[str] | None = None) -> bool:
  """Whether the command line (`argv`, default `sys.argv`) asks for
  tracebacks: `--verbosity` / `-v` of 1 or more (absl's debug level).

  Read from the arguments, not from absl's flag: flag parsing may have
  stopped before reaching it, and the `tfds` command sets it to INFO after
  parsing.
  """
  argv = sys.argv if argv is None else argv
  verbosity = 0
  for i, arg in enumerate(argv[1:], 1):
    match = re.fullmatch(r"--?(?:verbosity|v)(?:=(.*))?", arg)
    if not match:
      continue
    value = match.group(1)
    if value is None:
      value = argv[i + 1] if i + 1 < len(argv) else ""
    try:
      verbosity = int(value)
    except ValueError:
      pass  # absl refuses it itself.
  return verbosity >= 1


def stop(line: str, error: BaseException, status: int = 1,
         argv: list[str] | None = None) -> NoReturn:
  """Ends the command with `line` on stderr, after `error`'s traceback when
  the command line asks for it (`traceback_wanted`)."""
  if traceback_wanted(argv):
    traceback.print_exception(error)
  sys.stdout.flush()
  print(line, file=sys.stderr, flush=True)
  sys.exit(status)


def fail(message: str, error: BaseException,
         argv: list[str] | None = None) -> NoReturn:
  """`stop` with `error: <message>` and status 1."""
  stop(f"error: {message}", error, argv=argv)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing (`app.run`'s `flags_parser`), its errors in one
  `error:` line instead of the usage."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e), e, argv=argv)


def fail_on(error: BaseException) -> NoReturn:
  """Ends a command that `error` stopped: the message of a problem the user
  can act on (`ValueError`: `ConfigError`, `AudioError`, ...; `OSError`),
  the type and message of anything else."""
  if isinstance(error, (ValueError, OSError)):
    fail(str(error), error)
  fail(f"{type(error).__name__}: {error}"
       + ("" if traceback_wanted() else " (--verbosity=1 prints where)"),
       error)


def define_compilation_cache_flag(
    flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """--compilation_cache, read by `start_command`."""
  flags.DEFINE_string(
      "compilation_cache", None,
      "Folder of compiled programs kept between runs, so a second run on "
      "the same model compiles nothing; 'none' for no cache. Default: "
      f"${compilation.CACHE_ENV}, else the user cache folder "
      "($XDG_CACHE_HOME or ~/.cache, /inatsounds_jax/jax_cache).",
      flag_values=flag_values)


def start_command(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """The start of a command that loads a model, after flag parsing.

  absl's logging shows warnings and errors only (checkpoint loading
  chatters at INFO) unless --verbosity is given. TensorFlow, if something
  imported it, is kept off the GPUs, whose memory JAX needs; this does not
  import it (seconds), and the commands that use it (training) hide them
  themselves. JAX's persistent compilation cache is turned on in
  --compilation_cache, where the command defines it
  (`define_compilation_cache_flag`; otherwise its default).
  """
  if not flag_values["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  tensorflow = sys.modules.get("tensorflow")
  if tensorflow is not None:
    tensorflow.config.set_visible_devices([], "GPU")
  compilation.use_persistent_cache(
      flag_values["compilation_cache"].value
      if "compilation_cache" in flag_values else None)


def check_location_flags(values: dict) -> bool:
  """absl multi-flag validator of `latitude`, `longitude` and `locations`:
  both coordinates or neither, not with a locations file, and on Earth
  (`sphere.location_problem`, the check of every --locations row too)."""
  lat, lon = values["latitude"], values["longitude"]
  if lat is None and lon is None:
    return True
  if lat is None or lon is None:
    raise flags.ValidationError(
        "give both --latitude and --longitude, or neither")
  if values["locations"]:
    raise flags.ValidationError(
        "give --latitude/--longitude or --locations, not both")
  problem = sphere.location_problem(lat, lon)
  if problem:
    raise flags.ValidationError(problem)
  return True
