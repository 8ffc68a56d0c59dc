"""The Merlin L48 study's single-positive table on the synthetic corpus.

    nice -n 10 python benchmarks/spml.py [--seeds 3 --epochs 30] \
        [--world hard --corpus_seeds 2 --bootstrap 200] \
        [--model mobilenet_v3_small --learning_rate 3e-3] [--out DIR]

Rows: `full_bce` (trained on every species calling in each training
window: the upper bound), `an`, `an_ls`, `wan`, `em`, `epr`, `role`,
`ll_r`, `ll_ct`, `ll_cp`, `an` with a mean teacher, and `ema_only` (`an`
evaluated through the same EMA of the parameters with no consistency
term: the mean teacher's control, so that its row shows what the
consistency adds beyond averaging). Columns: the
label mode `target_only`, `geo` (true ranges as negatives), `checklist`
(the corpus's checklists as negatives) and
`target_only` plus asset regularisation. Cell: strong-label window mAP on
the validation split (`evaluators/strong_label.py`, no prior), mean and
sample standard deviation (ddof=1) over the runs: `--seeds` initialisation
and data-order seeds on each of `--corpus_seeds` corpora (`--world`:
"default", or "hard", the generator's harder world at this size); and in
brackets the mean over runs of each run's 95 % bootstrap interval over
validation recordings (`--bootstrap` resamples).

Then each of the paper's orderings (full > LS > EM > AN > the LL family;
prior negatives and asset regularisation help; checklist > geo; the mean
teacher beyond its EMA) is judged on paired resamples
(`inatsounds_jax.compare`): the two cells' runs with the same corpus and
seed are scored on the same resampled validation recordings, and the
ordering "agrees" when every such pair's 95 % interval of the difference
is above 0, "disagrees" when every one is below, else "cannot tell".

Every run goes through `train.train_and_evaluate`, the library's one loop,
by default with the `placeholder` backbone (a linear classifier on the
window's mean spectrum) so that a run takes seconds on CPU: the table
compares how the losses use the labels, not backbones. `--model
mobilenet_v3_small` (any backbone name) trains a real CNN on the paper's
spectrogram at a reduced 64 x 256 image instead (minutes a run on CPU;
pass its learning rate, e.g. `--learning_rate 3e-3`). The corpus has 24
species (about four per continent), so that range priors leave unknown
entries: with the tiny corpus's six species the true ranges make almost
every entry known.
Prints a Markdown table; `--json` also writes the raw numbers.

`--out DIR` keeps every run's workdir (`DIR/<row>/<column>/corpus<c>_seed
<s>`, its validation rows saved), so that the same command run again
picks up where a killed one stopped: finished runs are read back, a run
cut short resumes from its last checkpoint (the library's resume), and a
changed command is refused (the resume's config check). Without it each
run trains in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

from inatsounds_jax import checkpoints  # noqa: E402
from inatsounds_jax import compare  # noqa: E402
from inatsounds_jax import compilation  # noqa: E402
from inatsounds_jax import config_defaults  # noqa: E402
from inatsounds_jax import registry  # noqa: E402
from inatsounds_jax import scored_rows  # noqa: E402
from inatsounds_jax import storage  # noqa: E402
from inatsounds_jax import train  # noqa: E402
from inatsounds_jax import workdir as workdir_lib  # noqa: E402

ROWS = ("full_bce", "an", "an_ls", "wan", "em", "epr", "role", "ll_r",
        "ll_ct", "ll_cp", "mean_teacher", "ema_only")
COLUMNS = {"target_only": {"label_mode": "target_only"},
           "+geo": {"label_mode": "geo"},
           "+checklist": {"label_mode": "checklist"},
           "+asset_reg": {"label_mode": "target_only",
                          "asset_reg": {"weight": 1.0, "rate": 0.1}}}
METRIC = "no_prior/window_map"
# Rows whose loss never reads the mask of known entries (prior negatives are
# negatives already) or that train on full labels: their +geo and +checklist
# cells equal target-only, so they are not run again.
MASK_FREE = ("full_bce", "an", "mean_teacher", "ema_only")
# The paper's orderings (the Merlin L48 study, arXiv:2511.00252):
# (better cell, worse cell, what the paper found); each cell (row, column).
ORDERINGS = (
    (("full_bce", "target_only"), ("an_ls", "target_only"),
     "full labels > LS (62.4 vs 56.4)"),
    (("an_ls", "target_only"), ("em", "target_only"), "LS > EM (56.4 vs 55.3)"),
    (("em", "target_only"), ("an", "target_only"), "EM > AN (55.3 vs 52.2)"),
    (("an", "target_only"), ("ll_r", "target_only"),
     "AN > LL-R (52.2 vs 50.1)"),
    (("ll_r", "target_only"), ("ll_ct", "target_only"),
     "LL-R > LL-Ct (50.1 vs 48.0)"),
    (("ll_ct", "target_only"), ("ll_cp", "target_only"),
     "LL-Ct > LL-Cp (48.0 vs 43.8)"),
    (("mean_teacher", "target_only"), ("ema_only", "target_only"),
     "the mean teacher's consistency helps beyond its EMA"),
    *(((row, "+geo"), (row, "target_only"), f"geo negatives help {row}")
      for row in ROWS if row not in MASK_FREE),
    *(((row, "+checklist"), (row, "target_only"),
       f"checklist negatives help {row}")
      for row in ROWS if row not in MASK_FREE),
    *(((row, "+checklist"), (row, "+geo"), f"checklist > geo for {row}")
      for row in ROWS if row not in MASK_FREE),
    *(((row, "+asset_reg"), (row, "target_only"),
       f"asset regularisation helps {row}")
      for row in ROWS if row not in ("full_bce",)),
)


def base_config(seed: int, args, corpus_seed: int = 0) -> dict:
  """`args.model` on the benchmark corpus (`corpus_seed`), `args`'s
  schedule (`add_run_arguments`), the true ranges as geo prior; no
  evaluations. The placeholder reads the mean spectrum; a CNN backbone the
  paper's spectrogram at a reduced 64 x 256 single-channel image."""
  c = config_defaults.classifier()
  c.update(dataset="synthetic", data_dir=args.data_dir, model="placeholder",
           optimizer="adam", learning_rate=args.learning_rate,
           weight_decay=0.0, batch_size=32, eval_batch_size=64,
           num_epochs=float(args.epochs), warmup_epochs=0.0,
           shuffle_buffer=512, log_every_steps=1000,
           checkpoint_every_steps=100000, seed=seed,
           geo_prior="synthetic_truth", frontend_preset="inatsounds_float")
  c.dataset_options = {"num_species": args.species,
                       "num_recordings": args.recordings,
                       "seed": corpus_seed, "world": args.world}
  c.image.size = None
  c.image.channels = 1
  c.augment.freq_mask_max_width = 0
  c.augment.time_mask_max_width = 0
  if args.model != "placeholder":
    c.model = args.model
    c.frontend_preset = "inatsounds"
    c.image.size = (64, 256)
    c.model_options.bn_momentum = 0.9
    c.model_options.dropout = 0.0
  return c


def run_config(row: str, column: dict, seed: int, args,
               corpus_seed: int = 0) -> dict:
  c = base_config(seed, args, corpus_seed)
  c.evals = {"strong": {"type": "strong_label", "split": "validation",
                        "every_epochs": 0.0, "bootstrap": args.bootstrap,
                        "save_rows": bool(args.out)}}
  c.best_metric = "strong/" + METRIC
  c.evals.strong.every_epochs = float(args.epochs)
  c.update(column)
  c.loss = row
  if row == "full_bce":
    c.label_mode = "full"
  if row in ("mean_teacher", "ema_only"):
    c.loss = "an"
    # The teacher (the EMA) is evaluated; 270 steps need a shorter EMA than
    # the paper's 0.999, which would still be mostly the initialisation.
    c.ema_decay = 0.99
  if row == "mean_teacher":
    c.mean_teacher.weight = 1.0
    c.mean_teacher.consistency = "pred_mse"
  return c


def add_run_arguments(parser: argparse.ArgumentParser, name: str,
                      epochs: int) -> None:
  """Seeds, schedule (`epochs` by default), corpus size, data dir
  (`/tmp/inatsounds_<name>_...`), backbone and --json: what `base_config`
  reads."""
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--corpus_seeds", type=int, default=1)
  parser.add_argument("--world", choices=("default", "hard"),
                      default="default")
  parser.add_argument("--bootstrap", type=int, default=200)
  parser.add_argument("--epochs", type=int, default=epochs)
  parser.add_argument("--learning_rate", type=float, default=0.03)
  parser.add_argument("--species", type=int, default=24)
  parser.add_argument("--recordings", type=int, default=480)
  parser.add_argument("--data_dir", default=os.path.join(
      tempfile.gettempdir(), f"inatsounds_{name}_benchmark_tfds"))
  parser.add_argument("--json", default="")
  parser.add_argument("--out", default="",
                      help="keep the runs here and resume them (module "
                      "docstring); default: temporary folders")
  parser.add_argument("--model", default="placeholder",
                      help="placeholder, or a backbone name "
                      "(e.g. mobilenet_v3_small)")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  # Trained to convergence: at 6 epochs (54 steps) the seeds' spread (2-5
  # mAP points) was as large as the gaps between losses; at 30 it is 0.1-0.2.
  add_run_arguments(parser, "spml", epochs=30)
  parser.add_argument("--rows", default=",".join(ROWS))
  parser.add_argument("--columns", default=",".join(COLUMNS))
  args = parser.parse_args()
  # As `main` does: the runs share their evaluation program, and a command
  # run again compiles none of its programs.
  compilation.use_persistent_cache()
  results, rows = {}, {}
  start = time.time()
  for row in args.rows.split(","):
    for name in args.columns.split(","):
      if row in MASK_FREE and name in ("+geo", "+checklist"):
        continue
      runs = []
      for corpus_seed in range(args.corpus_seeds):
        for seed in range(args.seeds):
          config = run_config(row, COLUMNS[name], seed, args, corpus_seed)
          if args.out:
            window, found = kept_run(config, os.path.join(
                args.out, row, name.lstrip("+"),
                f"corpus{corpus_seed}_seed{seed}"))
          else:
            with tempfile.TemporaryDirectory() as workdir:
              window, found = window_results(
                  train.train_and_evaluate(config, workdir)["strong"])
          runs.append({"map": window["map"], "corpus_seed": corpus_seed,
                       "seed": seed, **window.get("interval", {})})
          rows[(row, name, corpus_seed, seed)] = found
      results[(row, name)] = runs
      print(f"{row:12s} {name:12s} "
            + " ".join(f"{r['map']:.3f}" for r in runs)
            + f"  ({time.time() - start:.0f} s)", flush=True)
  columns = args.columns.split(",")
  print("\n| loss | " + " | ".join(columns) + " |")
  print("|---|" + "---|" * len(columns))
  for row in args.rows.split(","):
    cells = []
    for name in columns:
      if (row, name) not in results:
        cells.append("= target-only")
        continue
      cells.append(cell_text(results[(row, name)]))
    print(f"| {row} | " + " | ".join(cells) + " |")
  verdicts = judge_orderings(rows, args)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"cells": {f"{r}/{c}": v for (r, c), v in results.items()},
                 "orderings": verdicts}, f, indent=1)


def window_results(output) -> tuple[dict, scored_rows.ScoredRows]:
  """A run's window-level summary (no prior) and validation rows."""
  return output.summary["no_prior"]["window"], output.rows["no_prior/window"]


def kept_run(config, workdir: str) -> tuple[dict, scored_rows.ScoredRows]:
  """`window_results` of the run of `config` in `workdir`: read back when
  an earlier invocation finished it (its final evaluation wrote the rows),
  else trained there, resuming from its last checkpoint if any."""
  rows_path = workdir_lib.eval_rows_path(workdir, "strong")
  if not rows_path.exists():
    # A resume refused here names its workdir, which is under --out.
    return window_results(train.train_and_evaluate(config, workdir)["strong"])
  try:
    # Refuses a command that would change the finished run, as resuming.
    checkpoints.check_config_for_resume(
        workdir, config, resuming=True, defaults=config_defaults.classifier())
  except registry.ConfigError as e:
    raise SystemExit(f"{e}\n(benchmarks/spml.py: the --out of another "
                     "command; give this one its own --out)") from None
  summary = storage.read_json(workdir_lib.path(
      workdir, workdir_lib.EVAL_RESULTS_FILE))["evals"]["strong"]
  return (summary["no_prior"]["window"],
          scored_rows.read_rows(os.fspath(rows_path))["no_prior/window"])


def same_cell(cell: tuple[str, str]) -> tuple[str, str]:
  """The cell whose runs stand for `cell`: mask-free rows' prior columns
  are their target-only runs (not run again)."""
  row, column = cell
  if row in MASK_FREE and column in ("+geo", "+checklist"):
    return row, "target_only"
  return cell


def judge_orderings(rows: dict, args) -> list[dict]:
  """Prints and returns each of ORDERINGS whose cells were run, judged on
  paired resamples run by run (`compare.ordering_verdict`)."""
  print(f"\nAgainst the paper's orderings (window mAP, paired bootstrap "
        f"over validation recordings, {args.bootstrap} resamples, per "
        "corpus and seed):")
  out = []
  for better, worse, paper in ORDERINGS:
    better, worse = same_cell(better), same_cell(worse)
    if better == worse:
      continue
    keys = sorted({k[2:] for k in rows if k[:2] == better}
                  & {k[2:] for k in rows if k[:2] == worse})
    if not keys:
      continue
    pairs = [compare.compare(rows[(*better, *k)], rows[(*worse, *k)],
                             num_samples=args.bootstrap)[0] for k in keys]
    difference = {f: float(np.mean([getattr(c.difference, f) for c in pairs])
                           ) * 100 for f in ("estimate", "low", "high")}
    verdict = compare.ordering_verdict(pairs)
    print(f"- {paper}: {'/'.join(better)} - {'/'.join(worse)} "
          f"{difference['estimate']:+.1f} [{difference['low']:+.1f}, "
          f"{difference['high']:+.1f}] (mean over {len(pairs)} runs): "
          f"{verdict}")
    out.append({"paper": paper, "better": better, "worse": worse,
                "difference": difference, "verdict": verdict,
                "runs": len(pairs)})
  return out


def cell_text(runs: list[dict]) -> str:
  """"mean ± sample sd [mean interval]" in percent over `runs`."""
  v = np.array([r["map"] for r in runs]) * 100
  text = f"{v.mean():.1f}" + (f" ± {v.std(ddof=1):.1f}" if len(v) > 1
                              else "")
  if "low" in runs[0]:
    low = np.mean([r["low"] for r in runs]) * 100
    high = np.mean([r["high"] for r in runs]) * 100
    text += f" [{low:.1f}, {high:.1f}]"
  return text


if __name__ == "__main__":
  main()
