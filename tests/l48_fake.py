"""A tiny fake of the L48 download, in its authors' exact layout.

assets.json and clips.json are lists of records with every field of the
release (github.com/visipedia/ml48s, "Dataset Organization"), taxa.csv has
one row per species, images/<asset_id>/<clip_order>.jpg are small JPEG
spectrograms, and val_split.npy (int64 asset ids) sits beside them as the
benchmark's format script expects. Each present species draws a bright
horizontal band at its own height, so a classifier can learn the fake.
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np

SPECIES = ("amerob", "norcar", "blujay", "carwre")
WIDTH, HEIGHT = 40, 24  # The release's are 750 x 236.


def _image(present_rows: list[int], rng) -> np.ndarray:
  image = rng.integers(0, 60, (HEIGHT, WIDTH), dtype=np.uint8)
  for row in present_rows:
    band = slice(row * HEIGHT // len(SPECIES),
                 (row + 1) * HEIGHT // len(SPECIES))
    image[band] = 230
  return np.repeat(image[..., None], 3, axis=-1)


def write(root: str, train_assets_per_species: int = 3,
          test_assets_per_species: int = 1, clips_per_asset: int = 3,
          seed: int = 0) -> dict:
  """Writes the fake into `root`; returns what it wrote, for the tests:
  `assets`, `clips` (the records) and `validation` (asset ids)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, "taxa.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["species_code", "common_name", "scientific_name"])
    for code in SPECIES:
      writer.writerow([code, f"Common {code}", f"Genus {code}"])
  assets, clips, validation = [], [], []
  for s, target in enumerate(SPECIES):
    ids = ([s * 10 + i for i in range(train_assets_per_species)] +
           [8000 + s * 10 + i for i in range(test_assets_per_species)])
    validation.append(ids[0])
    for asset_id in ids:
      other = SPECIES[(s + 1) % len(SPECIES)]
      # The range leaves out one species (a geo negative); the checklist
      # holds only the two species that call (two checklist negatives).
      possible = [c for c in SPECIES if c != SPECIES[(s + 2) % len(SPECIES)]]
      observed = [target, other]
      asset_clips = []
      for order in range(clips_per_asset):
        # Clip 0: target alone, fully labelled; clip 1: target absent
        # (an "Unknown bird" box: non-present species unknown); clip 2:
        # target with a background species.
        present = {0: [target], 1: [], 2: [target, other]}[order % 3]
        unknown = ([c for c in SPECIES if c not in present]
                   if order % 3 == 1 else [])
        absent = [c for c in SPECIES if c not in present + unknown]
        path = f"images/{asset_id}/{order}.jpg"
        os.makedirs(os.path.join(root, os.path.dirname(path)), exist_ok=True)
        Image.fromarray(_image([SPECIES.index(c) for c in present], rng)
                        ).save(os.path.join(root, path), quality=95)
        asset_clips.append({
            "id": len(clips) + len(asset_clips), "asset_id": asset_id,
            "clip_order": order, "file_path": path, "width": WIDTH,
            "height": HEIGHT, "present_species_codes": present,
            "unknown_species_codes": unknown,
            "absent_species_codes": absent,
            "boxes": [{"id": i, "species_code": c, "status": "active",
                       "bbox": [0.1, 0.2, 0.5, 0.6]}
                      for i, c in enumerate(present)]})
      clips.extend(asset_clips)
      asset_present = sorted({c for clip in asset_clips
                              for c in clip["present_species_codes"]})
      asset_absent = [c for c in SPECIES if all(
          c in clip["absent_species_codes"] for clip in asset_clips)]
      assets.append({
          "id": asset_id, "split": "test" if asset_id >= 8000 else "train",
          "target_species_code": target,
          "possible_species_codes": possible,
          "observed_species_codes": observed,
          "present_species_codes": asset_present,
          "unknown_species_codes": [c for c in SPECIES if c not in
                                    asset_present + asset_absent],
          "absent_species_codes": asset_absent})
  for name, records in (("assets.json", assets), ("clips.json", clips)):
    with open(os.path.join(root, name), "w") as f:
      json.dump(records, f)
  np.save(os.path.join(root, "val_split.npy"), np.array(validation, np.int64))
  return {"assets": assets, "clips": clips, "validation": validation}
