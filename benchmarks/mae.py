"""MAE pretraining vs random init vs supervised, on the synthetic corpus (CPU).

    python benchmarks/mae.py [--epochs_pretrain 20] [--epochs_finetune 10] \
        [--seed 0] [--out /tmp/mae_bench]

A small-scale run of the MAE study's comparison (Liu et al. 2026, Tables 2
and 3) through the library's own jobs (configs/mae_pretrain.py and
configs/mae_finetune.py, their tiny variants enlarged):

- MAE: pretrain on the train split (labels unused), then fine-tune;
- random: the same fine-tune from a random initialisation;
- supervised: the same classifier trained from scratch for the pretraining
  plus fine-tuning epochs (the same total budget as the MAE arm; no ImageNet
  weights can be downloaded here, so this stands in for the study's
  "IN-SL" row only as "supervised with equal compute");
- linear probes (frozen encoder, non-affine batch norm + linear head) of the
  MAE encoder and of a random encoder.

Every run uses vit_mu16 (2 blocks, width 64) on 64 x 128 images of the
paper's spectrogram, seed `--seed` (model initialisation, data order and
masks). Reports validation file-level top-1 (mean pooling, class-averaged)
and wall time; writes `OUT/seed<N>/results.json`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import time

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
  c.dataset_options = dict(DATASET)
  c.image.size = (64, 128)
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


def top1(results) -> float:
  return float(results["validation"].metrics["mean/no_prior/top1"])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--epochs_pretrain", type=float, default=20)
  parser.add_argument("--epochs_finetune", type=float, default=10)
  parser.add_argument("--out", default="/tmp/mae_bench")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  data_dir = os.path.join(args.out, "tfds")
  out = os.path.join(args.out, f"seed{args.seed}")
  rows = {}

  def run(name, config):
    start = time.perf_counter()
    results = train.train_and_evaluate(config, os.path.join(out, name))
    rows[name] = {"seconds": round(time.perf_counter() - start, 1)}
    if "validation" in results and "mean/no_prior/top1" in (
        results["validation"].metrics):
      rows[name]["val_top1"] = round(top1(results), 4)
    else:
      rows[name]["val_loss"] = round(results["validation"].metrics["loss"], 4)
    print(name, rows[name], flush=True)

  pre = common(load_config("mae_pretrain", "tiny"), data_dir,
               args.epochs_pretrain, args.seed)
  pre.mae.local_window = (2, 4)
  set_learning_rate(pre, 1.5e-3)
  run("mae_pretrain", pre)
  mae_dir = os.path.join(out, "mae_pretrain")
  ft, seed = args.epochs_finetune, args.seed
  run("finetune_from_mae", finetune_config(data_dir, ft, seed, "tiny",
                                           mae_dir))
  run("finetune_from_random", finetune_config(data_dir, ft, seed, "tiny"))
  run("supervised_equal_budget", finetune_config(
      data_dir, ft + args.epochs_pretrain, seed, "tiny"))
  run("linear_probe_mae", finetune_config(data_dir, ft, seed,
                                          "tiny,linear_probe", mae_dir))
  run("linear_probe_random", finetune_config(data_dir, ft, seed,
                                             "tiny,linear_probe"))
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump({"dataset": DATASET, "seed": seed,
               "epochs_pretrain": args.epochs_pretrain,
               "epochs_finetune": ft, "runs": rows}, f, indent=1)
  print(json.dumps(rows, indent=1))


if __name__ == "__main__":
  main()
