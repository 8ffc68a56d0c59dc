"""Few-shot probes on stored embeddings: linear against prototypical.

    nice -n 10 python benchmarks/few_shot.py [--shots 1 2 5 --seeds 5]

The agile loop's two probes (`agile_modelling.py`) given N example
recordings of each species (every window of an example carries its
species; the other species' windows are its negatives):

- `linear`: `custom_classifier.fit_head` (sigmoid cross-entropy, Adam);
- `prototype (cosine)`: the exact cosine of each window with its class's
  prototype (`Prototypes.cosine`), in the store's centred geometry;
- `prototype (bundle)`: the prototype head a round's bundle computes
  (every window's centred length taken as the examples' mean).

Bird-MAE (Rauch et al. 2025, arXiv:2504.12880) reports prototypical
probing far above linear probing with few labels, on a trained encoder's
frozen features; here the features are an initialised `placeholder`
backbone's (the time-averaged mel spectrum: no training, so the numbers
say how the probes use a fixed embedding, not how good an embedding is).

Data: a synthetic corpus (`--species`, `--recordings`), its train split
the pool of examples and its val split the evaluation; one embedding store
holds both (`agile_modelling.embed`), so its mean centres the prototypes
as it centres a search. Metric: window-level AP of each species on the val
split's windows (a window's truth is its recording's species;
`metrics.per_class_ap_and_best_f1`), averaged over species with a val
recording (`metrics.class_mean`): cmAP, mean and standard deviation over
seeds (the examples drawn). Prints a Markdown table; `--json` also writes
the raw numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from inatsounds_jax import agile_modelling  # noqa: E402
from inatsounds_jax import config_defaults  # noqa: E402
from inatsounds_jax import inference  # noqa: E402
from inatsounds_jax import metrics  # noqa: E402
from inatsounds_jax import synthetic  # noqa: E402
from inatsounds_jax import trained as trained_lib  # noqa: E402

PROBES = ("linear", "prototype (cosine)", "prototype (bundle)")


def placeholder_model() -> trained_lib.TrainedModel:
  """An initialised placeholder classifier (its embedding needs no
  training)."""
  config = config_defaults.tiny(config_defaults.classifier())
  config.model = "placeholder"
  model = trained_lib.build_model(config, 2, multilabel=False)
  variables = jax.jit(lambda rng: trained_lib.init_variables(model, rng))(
      jax.random.PRNGKey(0))
  labels = [{"species": f"base {i}", "common_name": ""} for i in range(2)]
  return trained_lib.TrainedModel(model, variables, config, labels, False, 0)


def split_windows(store, corpus: str, split: str, species: list[str]):
  """{species index: [each recording's embeddings]} of a split's
  recordings (a recording's species: its category folder's)."""
  out = {k: [] for k in range(len(species))}
  for k, name in enumerate(species):
    folder = os.path.join(corpus, split, name)
    if not os.path.isdir(folder):
      continue
    for path, _ in inference.find_audio(folder):
      digest = next(r.digest for r in store.recordings.values()
                    if r.path == path)
      out[k].append(store.windows_of(digest)[0])
  return out


def scores_of(probe: str, x, y, mean, evaluation, settings):
  if probe == "linear":
    head = agile_modelling.fit_probe(x, y, mean, settings)
    return agile_modelling.sigmoid(head.logits(evaluation))
  prototypes = agile_modelling.Prototypes.fit(x, y, mean)
  if probe == "prototype (cosine)":
    return prototypes.cosine(evaluation)
  return agile_modelling.sigmoid(
      prototypes.head(settings.temperature).logits(evaluation))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shots", type=int, nargs="+", default=[1, 2, 5])
  parser.add_argument("--seeds", type=int, default=5)
  parser.add_argument("--species", type=int, default=12)
  parser.add_argument("--recordings", type=int, default=360)
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  started = time.time()
  with tempfile.TemporaryDirectory() as tmp:
    corpus = os.path.join(tmp, "corpus")
    synthetic.generate(corpus, synthetic.CorpusConfig(
        num_species=args.species, num_recordings=args.recordings, seed=0,
        max_duration_s=20.0, long_recording_fraction=0.0), num_workers=1)
    model = placeholder_model()
    for split in ("train", "val"):
      store = agile_modelling.embed(os.path.join(tmp, "store"), model,
                                    os.path.join(corpus, split))
    species = sorted(os.listdir(os.path.join(corpus, "train")))
    pool = split_windows(store, corpus, "train", species)
    held_out = split_windows(store, corpus, "val", species)
    evaluation = np.concatenate([w for k in held_out for w in held_out[k]])
    truth = np.concatenate([
        np.broadcast_to(np.arange(len(species)) == k, (len(w), len(species)))
        for k in held_out for w in held_out[k]])
    mean = store.mean_embedding()
    print(f"{len(species)} species, {sum(map(len, pool.values()))} train "
          f"recordings, {len(evaluation)} val windows "
          f"({int(truth.any(0).sum())} species); embedded in "
          f"{time.time() - started:.0f} s")
  settings = agile_modelling.RoundSettings()
  results = {probe: {shots: [] for shots in args.shots} for probe in PROBES}
  for shots in args.shots:
    for seed in range(args.seeds):
      rng = np.random.default_rng(seed)
      x, y = [], []
      for k, recordings in pool.items():
        for i in rng.permutation(len(recordings))[:shots]:
          x.append(recordings[i])
          y.append(np.broadcast_to(np.arange(len(species)) == k,
                                   (len(recordings[i]), len(species))))
      x, y = np.concatenate(x), np.concatenate(y).astype(np.float32)
      for probe in PROBES:
        scores = scores_of(probe, x, y, mean, evaluation, settings)
        ap, _ = metrics.per_class_ap_and_best_f1(scores, truth)
        results[probe][shots].append(metrics.class_mean(ap, truth).value)
  print(f"\nval window cmAP, mean ± sd over {args.seeds} seeds "
        f"({time.time() - started:.0f} s in all)\n")
  print("| probe | " + " | ".join(f"{s} shot{'s' * (s > 1)}"
                                    for s in args.shots) + " |")
  print("|---|" + "---|" * len(args.shots))
  for probe in PROBES:
    print(f"| {probe} | " + " | ".join(
        f"{np.mean(v):.3f} ± {np.std(v):.3f}"
        for v in results[probe].values()) + " |")
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump({p: {str(s): v for s, v in r.items()}
                 for p, r in results.items()}, f, indent=1)


if __name__ == "__main__":
  main()
