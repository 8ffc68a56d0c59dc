"""Location during training against the post-hoc geo prior, synthetic corpus.

    nice -n 10 python benchmarks/location.py [--seeds 3 --prior truth|sinr]

The iNatSounds paper applies its geo prior after training (s.5.1) and asks
whether geographic information helps during training (s.6). Rows:

- `no location`: the classifier alone;
- `post-hoc prior`: the same run, species outside the recording's range
  (prior < 0.1) get the lowest logit (the paper's protocol);
- `encoding`: SINR's location encoding joined to the pooled features
  (`config.location_input = "encoding"`);
- `encoding + post-hoc prior`: that run with the post-hoc prior as well;
- `prior_logits`: the prior's log-probabilities added to the logits in
  training and evaluation.

By default the prior everywhere is the corpus's true ranges
(`synthetic_truth`), so the rows differ only in how the location is used,
not in the quality of a range model; `--prior sinr` uses a SINR range model
trained on the train split's locations instead (the realistic case).
Columns: file-level top-1 and mAP (mean pooling, `evaluators/file_level.py`)
on the validation split, mean and standard deviation over seeds
(initialisation and data order; the corpus is fixed).

Every run goes through `train.train_and_evaluate` with the `placeholder`
backbone (a linear classifier on the window's mean spectrum) and softmax
cross-entropy, set up as in `spml.py` (24 species, 6 epochs, Adam 0.03),
so a run takes seconds on CPU. Prints a Markdown table; `--json` also
writes the raw numbers.
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

from inatsounds_jax import config_defaults  # noqa: E402
from inatsounds_jax import train  # noqa: E402
from inatsounds_jax.geo import train_range  # noqa: E402
import spml  # noqa: E402  (benchmarks/: the same placeholder runs)

# Row -> (location_input of the run, file-level view read from it).
ROWS = {"no location": ("", "no_prior"),
        "post-hoc prior": ("", "prior"),
        "encoding": ("encoding", "no_prior"),
        "encoding + post-hoc prior": ("encoding", "prior"),
        "prior_logits": ("prior_logits", "no_prior")}
METRICS = ("top1", "map")


def prior_source(args) -> str:
  """`geo_prior` for every run: the true ranges, or (`--prior sinr`) a SINR
  range model trained once on the corpus's train split
  (`configs/sinr.py:synthetic`'s recipe) into `args.workdir`."""
  if args.prior == "truth":
    return "synthetic_truth"
  c = spml.base_config(0, args)
  c.range_model = config_defaults.range_model("synthetic")
  return train_range.train_for_classifier(c, args.workdir)


def run_config(location_input: str, seed: int, prior: str, args) -> dict:
  c = spml.base_config(seed, args)
  c.location_input = location_input
  c.geo_prior = prior
  c.evals = {"validation": {
      "type": "file_level", "split": "validation",
      "every_epochs": float(args.epochs), "geo_prior": prior}}
  c.best_metric = "validation/mean/no_prior/map"
  return c


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  spml.add_run_arguments(parser, "location", epochs=6)
  parser.add_argument("--prior", choices=("truth", "sinr"), default="truth")
  parser.add_argument("--workdir", default=os.path.join(
      tempfile.gettempdir(), "inatsounds_location_benchmark_sinr"))
  args = parser.parse_args()
  prior = prior_source(args)
  print(f"geo prior: {prior}", flush=True)
  results = {row: {m: [] for m in METRICS} for row in ROWS}
  start = time.time()
  for location_input in dict.fromkeys(v[0] for v in ROWS.values()):
    for seed in range(args.seeds):
      config = run_config(location_input, seed, prior, args)
      with tempfile.TemporaryDirectory() as workdir:
        metrics = train.train_and_evaluate(config, workdir)[
            "validation"].metrics
      for row, (row_input, view) in ROWS.items():
        if row_input == location_input:
          for m in METRICS:
            results[row][m].append(metrics[f"mean/{view}/{m}"])
      print(f"{location_input or 'none':12s} seed {seed}: " + " ".join(
          f"{view} top1 {metrics[f'mean/{view}/top1']:.3f} map "
          f"{metrics[f'mean/{view}/map']:.3f}"
          for view in ("no_prior", "prior"))
            + f"  ({time.time() - start:.0f} s)", flush=True)
  print("\n| validation, file level (mean pooling) | top-1 (%) | mAP (%) |")
  print("|---|---:|---:|")
  for row, values in results.items():
    cells = [f"{np.mean(values[m]) * 100:.1f} ± {np.std(values[m]) * 100:.1f}"
             for m in METRICS]
    print(f"| {row} | " + " | ".join(cells) + " |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
