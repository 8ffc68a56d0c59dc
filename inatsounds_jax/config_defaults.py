"""Defaults shared by the classifier configs in `configs/`.

The recipe is the iNatSounds paper's (Chasmai et al. 2025, and its
supplementary training details).

The recipe configs start from `classifier()` (the paper's ResNet recipe) and
change what their model needs; `tiny()` shrinks any of them to a CPU-sized
smoke run. In the package, not in `configs/`, so that a config file imports
it from any working directory.
"""

import ml_collections


def classifier() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Data.
  c.dataset = "full"  # "full" (the release) or "synthetic".
  c.data_dir = ""  # TFDS data dir; "" = TFDS's default.
  c.manual_dir = ""  # The release's archives or folders (config "full").
  # Fields of the builder config, e.g. num_species for "synthetic".
  c.dataset_options = ml_collections.ConfigDict()
  c.train_split = "train"
  c.frontend_preset = "inatsounds"
  c.window_frames = 512
  c.eval_stride_frames = 256
  c.shuffle_buffer = 2048
  # Model.
  c.model = "resnet50"
  c.model_options = ml_collections.ConfigDict()  # dropout, drop_path, ...
  c.image = ml_collections.ConfigDict({"size": (224, 224), "channels": 3})
  c.dtype = "float32"  # or "bfloat16" compute.
  c.init_checkpoint = ""  # torchvision/timm .pth or .safetensors.
  # Augmentation (SpecAugment on; mixup off).
  c.augment = ml_collections.ConfigDict({
      "freq_mask_max_width": 14, "time_mask_max_width": 14,
      "num_freq_masks": 1, "num_time_masks": 1,
      "mixup": False, "mixup_alpha": 1.0})
  # Loss and optimisation.
  c.loss = "softmax_ce"  # A name in losses.LOSSES.
  # Its hyperparameters (losses.py; unset ones take their defaults).
  c.loss_options = ml_collections.ConfigDict()
  # Which label entries are known (label_modes.py): target_only, geo
  # (needs geo_prior), checklist, full (both need the synthetic corpus).
  c.label_mode = "target_only"
  # Asset regularisation (losses.with_asset_regularisation): off at 0.
  c.asset_reg = ml_collections.ConfigDict({"weight": 0.0, "rate": 0.001})
  c.optimizer = "sgd"  # sgd (Nesterov), adam, adamw.
  c.learning_rate = 0.05
  c.momentum = 0.9
  c.nesterov = True
  c.weight_decay = 1e-5
  c.grad_clip_norm = 100.0
  c.batch_size = 128
  c.num_epochs = 50.0
  c.warmup_epochs = 5.0
  c.warmup_init_factor = 0.1
  c.final_lr_factor = 0.1
  c.ema_decay = 0.0  # e.g. 0.999 to evaluate an EMA of the parameters.
  # Mean teacher (mean_teacher.py; the teacher is the EMA): off at weight 0.
  c.mean_teacher = ml_collections.ConfigDict({
      "weight": 0.0, "consistency": "pred_mse", "rampup_epochs": 0.0,
      "teacher_erasing": False, "geo_mask": False})
  c.shard_params = False  # FSDP-style sharding of parameters and optimizer.
  c.distributed = False  # jax.distributed.initialize() for multi-host.
  # Evaluation: plug-ins by name (inatsounds_jax/evaluators/), each run
  # every `every_epochs` (0: only at the end, on the best checkpoint).
  c.eval_batch_size = 128
  # "": none; "synthetic_truth": the synthetic corpus's true ranges; or the
  # workdir of a trained range model (configs/sinr.py). Every file-level
  # evaluation follows these two fields.
  c.geo_prior = ""
  c.geo_threshold = 0.1
  c.evals = ml_collections.ConfigDict({
      split: {"type": "file_level", "split": split,
              "every_epochs": 1.0 if split == "validation" else 0.0,
              "geo_prior": c.get_ref("geo_prior"),
              "geo_threshold": c.get_ref("geo_threshold")}
      for split in ("validation", "test")})
  # The best checkpoint: `<evaluation>/<metric>` of a periodic evaluation.
  c.best_metric = "validation/mean/no_prior/map"
  c.log_every_steps = 50
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.seed = 0
  return c


# The small synthetic set every `:tiny` variant shares (one TFDS build).
TINY_DATASET = {"num_species": 6, "num_recordings": 36}


def tiny(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks any recipe to run a few steps on CPU on a small synthetic set."""
  c.update(dataset="synthetic", init_checkpoint="", batch_size=8,
           eval_batch_size=16, num_epochs=1.0, warmup_epochs=0.0,
           log_every_steps=1, checkpoint_every_steps=2, shuffle_buffer=64)
  c.dataset_options = dict(TINY_DATASET)
  c.image.size = (64, 64)
  return c
