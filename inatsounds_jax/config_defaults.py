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
  # What is trained (objectives/): "classification" or
  # "masked_reconstruction" (masked-autoencoder pretraining).
  c.objective = "classification"
  # Data.
  c.dataset = "full"  # "full" (the release), "synthetic", "l48", "soundscapes".
  c.data_dir = ""  # TFDS data dir; "" = TFDS's default.
  c.manual_dir = ""  # The release's archives or folders (config "full").
  # Fields of the builder config, e.g. num_species for "synthetic".
  c.dataset_options = ml_collections.ConfigDict()
  c.train_split = "train"
  # Name -> source of training windows (data_sources.py: the train split,
  # folders of unlabelled audio, mixtures), for objectives without labels;
  # empty: train_split.
  c.pretrain_sources = ml_collections.ConfigDict()
  # A keep-list of curated train_split windows (inatsounds_jax/curate.py);
  # "" = every window.
  c.train_window_filter = ""
  # A window store of train_split (inatsounds_jax/window_store.py) to read
  # training windows from at a window's cost; "" = the TFDS records. Its
  # windows are cut by one thread of the training process (0, about one
  # core's worth) or by this many worker processes.
  c.train_window_store = ""
  c.train_window_store_workers = 0
  # What an epoch of train_split is (input_pipeline.TrainEpoch): "recording"
  # (one random window per file, the iNatSounds paper) or "clip" (every
  # dense window once, the MAE study); and a random fraction of its files,
  # the same for every run with the same train_fraction_seed (partial
  # fine-tuning with less labelled data, the MAE study s. 4.5).
  c.train_epoch_unit = "recording"
  c.train_fraction = 1.0
  c.train_fraction_seed = 0
  c.frontend_preset = "inatsounds"
  c.window_frames = 512
  c.eval_stride_frames = 256
  c.shuffle_buffer = 2048
  # Model.
  c.model = "resnet50"
  c.model_options = ml_collections.ConfigDict()  # dropout, drop_path, ...
  # Optional "mean"/"std" of the 0..1 image (one, or one per channel; e.g.
  # ImageNet's in configs/l48.py); unset: the paper's spectrogram statistics.
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
  # A second prior reported beside geo_prior as the view "ceiling" (e.g.
  # "synthetic_truth", the best any range model could do); "" = none.
  c.geo_ceiling_prior = ""
  # The recording's location as a classifier input during training
  # (geo/location_input.py): "" off; "encoding" (SINR's location encoding
  # through a learned layer, joined to the pooled features; option
  # `width`, 64) or "prior_logits" (geo_prior's log-probabilities added to
  # the logits, in training and evaluation; option `floor`, 1e-3).
  c.location_input = ""
  c.location_options = ml_collections.ConfigDict()
  # A range-model job config (`range_model()`): the run first trains it on
  # its own dataset's train split into WORKDIR/range_model and uses it as
  # geo_prior. None: geo_prior as given.
  c.range_model = None
  c.evals = ml_collections.ConfigDict({
      split: {"type": "file_level", "split": split,
              "every_epochs": 1.0 if split == "validation" else 0.0,
              "geo_prior": c.get_ref("geo_prior"),
              "geo_ceiling_prior": c.get_ref("geo_ceiling_prior"),
              "geo_threshold": c.get_ref("geo_threshold"),
              # 95 % intervals over resampled files (0: none), and the
              # rows written for `python -m inatsounds_jax.compare`.
              "bootstrap": 0, "save_rows": False}
      for split in ("validation", "test")})
  # The best checkpoint: `<evaluation>/<metric>` of a periodic evaluation.
  c.best_metric = "validation/mean/no_prior/map"
  c.log_every_steps = 50
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.seed = 0
  return c


def mae_optimizer(c: ml_collections.ConfigDict, base_learning_rate: float,
                  weight_decay: float, betas: tuple[float, float]
                  ) -> ml_collections.ConfigDict:
  """The MAE recipes' optimisation (He et al. 2022, A.1-A.2; AudioMAE):
  AdamW with weight decay on weight matrices only, learning rate
  `base_learning_rate x batch_size / 256` (follows --config.batch_size),
  linear warm-up from 0 and cosine to 0, no clipping."""
  c.optimizer = "adamw"
  c.adam_betas = betas
  c.decay_matrices_only = True
  c.weight_decay = weight_decay
  c.base_learning_rate = base_learning_rate
  c.learning_rate = c.get_ref("base_learning_rate") * c.get_ref(
      "batch_size") / 256
  c.grad_clip_norm = 0.0
  c.warmup_init_factor = 0.0
  c.final_lr_factor = 0.0
  return c


# The small synthetic set every `:tiny` variant shares (one TFDS build).
TINY_DATASET = {"num_species": 6, "num_recordings": 36}


def range_model(variant: str = "") -> ml_collections.ConfigDict:
  """The SINR range-model job (Cole et al. 2023): the release's recipe, or
  "synthetic" (the synthetic corpus's ~1,100 observations: smaller batches
  and a higher rate give enough steps; the release's 137k give 67 steps per
  epoch at 2048)."""
  c = ml_collections.ConfigDict()
  c.job = "range_model"
  c.dataset = "full"
  c.data_dir = ""
  c.manual_dir = ""
  c.dataset_options = ml_collections.ConfigDict()
  c.observations_csv = ""  # Instead of the dataset's train split.
  c.epochs = 20
  c.batch_size = 2048
  c.learning_rate = 5e-4
  c.lr_decay_per_epoch = 0.98
  c.width = 256
  c.depth = 4
  c.dropout = 0.5
  c.pos_weight = 2048.0
  c.threshold = 0.1  # For the reported fraction of true ranges kept.
  c.map_species = ""  # Comma-separated names; "" = the 6 most observed.
  c.seed = 0
  if variant == "synthetic":
    c.dataset = "synthetic"
    c.epochs = 100
    c.batch_size = 256
    c.learning_rate = 2e-3
  elif variant:
    raise ValueError(f"unknown range-model variant {variant!r}")
  return c


def tiny(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks any recipe to run a few steps on CPU on a small synthetic set."""
  c.update(dataset="synthetic", init_checkpoint="", batch_size=8,
           eval_batch_size=16, num_epochs=1.0, warmup_epochs=0.0,
           log_every_steps=1, checkpoint_every_steps=2, shuffle_buffer=64)
  c.dataset_options = dict(TINY_DATASET)
  c.image.size = (64, 64)
  return c
