"""MAE pretraining vs random init vs supervised, on the synthetic corpus (CPU).

    python benchmarks/mae.py [--epochs_pretrain 20] [--epochs_finetune 10] \
        [--seed 0] [--corpus_seeds 2 --world hard --bootstrap 200] \
        [--image 64x128] [--out /tmp/mae_bench]

A small-scale run of the MAE study's comparison (Liu et al. 2026, Tables 2
and 3) through the library's own jobs (configs/mae_pretrain.py and
configs/mae_finetune.py, their tiny variants enlarged), on each of
`--corpus_seeds` corpora of `--world` ("hard": the generator's harder
world):

- MAE: pretrain on the train split (labels unused), then fine-tune;
- random: the same fine-tune from a random initialisation, i.e. the
  classifier trained from scratch with the fine-tune's number of updates
  (the supervised baseline at equal updates);
- supervised: the same classifier trained from scratch for the pretraining
  plus fine-tuning epochs (the same total budget as the MAE arm; no ImageNet
  weights can be downloaded here, so this stands in for the study's
  "IN-SL" row only as "supervised with equal compute");
- linear probes (frozen encoder, non-affine batch norm + linear head) of the
  MAE encoder and of a random encoder.

Epochs are the configs' clip epochs (every 3-s clip at 1.5-s stride, as
the study). Every run uses vit_mu16 (2 blocks, width 64) on `--image`
images of the paper's spectrogram (the study's is 128 x 512), seed
`--seed` (model initialisation, data order and masks). Reports validation
file-level top-1 (mean pooling, class-averaged) with its 95 % bootstrap
interval over validation files (`--bootstrap` resamples; the file-level
evaluator's `bootstrap` option), the mean and sample sd (ddof=1) over
corpora, and for each of the study's orderings "agrees", "disagrees" or
"cannot tell", judged on paired resamples (`inatsounds_jax.compare`: on
each corpus the two arms are scored on the same resampled validation
files; "agrees" when on every corpus the difference's 95 % interval is
above 0, "disagrees" when below); writes `OUT/results.json`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import time

import numpy as np

from inatsounds_jax import compare
from inatsounds_jax import train

REPO = pathlib.Path(__file__).resolve().parents[1]
DATASET = {"num_species": 10, "num_recordings": 240}
BATCH = 16


def set_learning_rate(c, lr: float):
  """The configs scale a base rate by batch / 256; this sets the result."""
  c.base_learning_rate = lr * 256 / c.batch_size


def load_config(name: str, variant: str):
  spec = importlib.util.spec_from_file_location(
      name, REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def common(c, data_dir: str, epochs: float, seed: int):
  c.seed = seed
  c.data_dir = data_dir
  c.batch_size = BATCH
  c.eval_batch_size = 64
  c.num_epochs = float(epochs)
  c.warmup_epochs = 1.0
  c.checkpoint_every_steps = 10_000
  c.log_every_steps = 50
  c.shuffle_buffer = 512
  c.evals.validation.every_epochs = float(epochs)  # Once, at the end.
  return c


def finetune_config(data_dir, epochs, seed, variant, init=""):
  c = common(load_config("mae_finetune", variant), data_dir, epochs, seed)
  c.init_checkpoint = init
  set_learning_rate(c, 3e-3 if "linear_probe" in variant else 1e-3)
  del c.evals["test"]
  return c


def top1(results) -> tuple[float, float, float]:
  """Validation file-level top-1 (mean pooling, class-averaged) and its
  95 % bootstrap interval over validation files (NaN without one)."""
  mean = results["validation"].summary["mean"]["no_prior"]
  interval = mean.get("interval", {}).get("top1", {})
  return (float(mean["top1"]), interval.get("low", float("nan")),
          interval.get("high", float("nan")))


# The study's orderings (Liu et al. 2026, Tables 2 and 3), as (better,
# worse, what the study found).
ORDERINGS = (
    ("finetune_from_mae", "finetune_from_random",
     "MAE init > random init (49.0 vs 38.0)"),
    ("supervised_equal_budget", "finetune_from_mae",
     "supervised pretraining > in-domain MAE (IN-SL 58.8 vs 49.0)"),
    ("finetune_from_mae", "linear_probe_mae",
     "fine-tune > linear probe of the MAE encoder (49.0 vs 3.7)"),
)


def paired_top1(better, worse, num_samples: int) -> compare.Comparison:
  """Top-1 (mean pooling) of two arms' validation rows, paired."""
  [found] = compare.compare(better, worse, num_samples=num_samples,
                            metrics=["mean/no_prior/top1"])
  return found


def run_corpus(args, corpus_seed: int) -> tuple[dict, dict]:
  """Every arm on corpus `corpus_seed`: ({arm: {val_top1, low, high,
  seconds} or {val_loss, seconds}}, {arm: its validation rows})."""
  data_dir = os.path.join(args.out, f"tfds_corpus{corpus_seed}")
  out = os.path.join(args.out, f"corpus{corpus_seed}_seed{args.seed}")
  dataset = dict(DATASET, seed=corpus_seed, world=args.world)
  rows, scored = {}, {}

  def run(name, config):
    config.dataset_options = dict(dataset)
    config.image.size = IMAGE[args.image]
    if "validation" in config.evals and config.evals.validation.get(
        "type", "file_level") == "file_level":
      config.evals.validation.bootstrap = args.bootstrap
    start = time.perf_counter()
    results = train.train_and_evaluate(config, os.path.join(out, name))
    rows[name] = {"seconds": round(time.perf_counter() - start, 1)}
    if "mean" in results["validation"].summary:
      rows[name].update(zip(("val_top1", "low", "high"), top1(results)))
      scored[name] = results["validation"].rows["mean/no_prior"]
    else:
      rows[name]["val_loss"] = round(results["validation"].metrics["loss"], 4)
    print(corpus_seed, name, rows[name], flush=True)

  pre = common(load_config("mae_pretrain", "tiny"), data_dir,
               args.epochs_pretrain, args.seed)
  pre.mae.local_window = (2, 4)
  set_learning_rate(pre, 1.5e-3)
  run("mae_pretrain", pre)
  mae_dir = os.path.join(out, "mae_pretrain")
  ft, seed = args.epochs_finetune, args.seed
  run("finetune_from_mae", finetune_config(data_dir, ft, seed, "tiny",
                                           mae_dir))
  # Random init: the classifier trained from scratch with the fine-tune's
  # updates (the supervised baseline at equal updates).
  run("finetune_from_random", finetune_config(data_dir, ft, seed, "tiny"))
  run("supervised_equal_budget", finetune_config(
      data_dir, ft + args.epochs_pretrain, seed, "tiny"))
  run("linear_probe_mae", finetune_config(data_dir, ft, seed,
                                          "tiny,linear_probe", mae_dir))
  run("linear_probe_random", finetune_config(data_dir, ft, seed,
                                             "tiny,linear_probe"))
  return rows, scored


ARMS = ("finetune_from_mae", "finetune_from_random",
        "supervised_equal_budget", "linear_probe_mae",
        "linear_probe_random")
IMAGE = {"64x128": (64, 128), "128x256": (128, 256), "128x512": (128, 512)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--epochs_pretrain", type=float, default=20)
  parser.add_argument("--epochs_finetune", type=float, default=10)
  parser.add_argument("--out", default="/tmp/mae_bench")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--corpus_seeds", type=int, default=1)
  parser.add_argument("--world", choices=("default", "hard"),
                      default="default")
  parser.add_argument("--bootstrap", type=int, default=200)
  parser.add_argument("--image", choices=sorted(IMAGE), default="64x128")
  args = parser.parse_args()
  runs, scored = {}, {}
  for seed in range(args.corpus_seeds):
    runs[seed], scored[seed] = run_corpus(args, seed)
  judged = {}
  for better, worse, study in ORDERINGS:
    pairs = [paired_top1(s[better], s[worse], args.bootstrap)
             for s in scored.values()]
    judged[study] = {
        "better": better, "worse": worse,
        "verdict": compare.ordering_verdict(pairs),
        "per_corpus": [{f: getattr(c.difference, f)
                        for f in ("estimate", "low", "high")}
                       for c in pairs]}
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump({"dataset": DATASET, "world": args.world, "seed": args.seed,
               "image": args.image, "epochs_pretrain": args.epochs_pretrain,
               "epochs_finetune": args.epochs_finetune,
               "runs": {str(k): v for k, v in runs.items()},
               "orderings": judged}, f, indent=1)
  print("\n| corpus | MAE val loss | " + " | ".join(ARMS) + " |\n|---|---:|"
        + "---:|" * len(ARMS))
  for seed, rows in runs.items():
    print(f"| {seed} | {rows['mae_pretrain']['val_loss']:.3f} | " + " | ".join(
        f"{rows[a]['val_top1']:.3f} [{rows[a]['low']:.3f}, "
        f"{rows[a]['high']:.3f}]" for a in ARMS) + " |")
  mean = {a: {k: float(np.mean([rows[a][k] for rows in runs.values()]))
              for k in ("val_top1", "low", "high")} for a in ARMS}
  sd = {a: float(np.std([rows[a]["val_top1"] for rows in runs.values()],
                        ddof=1)) if len(runs) > 1 else float("nan")
        for a in ARMS}
  print("| mean (sd) | | " + " | ".join(
      f"{mean[a]['val_top1']:.3f} ({sd[a]:.3f}) [{mean[a]['low']:.3f}, "
      f"{mean[a]['high']:.3f}]" for a in ARMS) + " |")
  print("\nAgainst the study's orderings (top-1 difference, paired "
        f"bootstrap over validation files, {args.bootstrap} resamples, per "
        "corpus):")
  for study, j in judged.items():
    print(f"- {study}: {j['better']} - {j['worse']}: " + "; ".join(
        f"corpus {i} {d['estimate']:+.3f} [{d['low']:+.3f}, "
        f"{d['high']:+.3f}]" for i, d in enumerate(j["per_corpus"]))
        + f": {j['verdict']}")


if __name__ == "__main__":
  main()
