"""The paper's settings: CFRNet, its targets, loss, data pipeline and training (with the
choices the paper leaves open; the loss's balance of levels is one, docs/deviations.md).

Every field can be overridden from the command line, e.g. `--config.model.fusion=add`.
The dataset configs (`shha.py`, ...) start from `get_config()` and change only what
differs; `default.py` shrinks the model for the CPU quick start.
"""

import ml_collections


def get_model_config() -> ml_collections.ConfigDict:
  """The paper's full model (the last row of Tables 1-3)."""
  model = ml_collections.ConfigDict()
  model.vgg_widths = (64, 128, 256, 512, 512)  # VGG16-BN; other widths only for tests.
  model.channels = 256  # c, every decoder feature (section 3.1).
  model.num_heads = 8  # CFRM heads; not given by the paper, must divide c.
  model.mlp_ratio = 4  # MLP hidden = 4c, which gives CFRM its 12c^2 weights.
  # Table 2 switches.
  model.use_gam = True
  model.gam_heads = 8  # GAM runs on the 512-channel stride-32 map.
  model.gam_depth = 1
  model.use_dhp = True
  model.head_channels = 256  # DHP: Conv 256 in both branches ...
  model.head_hidden_channels = 128  # ... then Conv 128 in the density branch.
  # Table 1 switch: 'cfrm', 'add' or 'concat'.
  model.fusion = "cfrm"
  # Table 3 switches and the windows of section 4.1.
  model.hierarchical = True
  model.hierarchical_window = 8
  model.axial = True
  model.axial_windows = (16, 8, 8)  # relocating F4, F3, F2 into F1.
  # The heads regress density x density_scale; 1 = the paper's plain densities.
  model.density_scale = 1.0
  # Initial kernel of each head's last (linear) density conv: "lecun_normal" (Flax's
  # default) or "zeros" (every head starts at density 0: with a linear output, random
  # initial values per cell far exceed the targets). models/heads.py.
  model.density_init = "lecun_normal"
  # At inference only: zero the density where a head's foreground probability is below
  # this (0 = off, the paper's soft product alone). models/heads.py.
  model.foreground_gate = 0.0
  model.dtype = "float32"  # compute dtype; "bfloat16" keeps float32 parameters.
  # Recomputed in the backward pass instead of stored: "none", "backbone" (the VGG blocks,
  # most of the activation memory) or "all" (also GAM, decoders, heads). Same results.
  model.remat = "none"
  # Attention kernel: "xla" (everywhere) or "cudnn" (NVIDIA GPU with bfloat16/float16).
  model.attention = "xla"
  return model


def get_data_config() -> ml_collections.ConfigDict:
  """Input pipeline settings (`cfrnet_jax/data/pipeline.py`), section 4.1 of the paper."""
  data = ml_collections.ConfigDict()
  data.name = "synthetic_crowd"  # a tfds_crowd dataset (with /config where needed).
  data.data_dir = ml_collections.FieldReference(None, field_type=str)  # ~/tensorflow_datasets
  data.train_split = "train"
  data.eval_split = "test"  # evaluated every eval_every_steps during training
  # Model selection (cfrnet_jax/training/trainer.py): with `validation`, eval_split is a
  # validation split, the best checkpoint by its MAE is the run's result, and
  # `test_split` (if labeled) is evaluated once with it at the end. Without (ShanghaiTech,
  # UCF_CC_50: no validation split), eval_split is the test split and the result is the
  # last checkpoint; ranking checkpoints on it needs `best_on_test` (configs/base.py).
  data.validation = False
  data.test_split = ""
  data.crop_size = 256
  data.flip_prob = 0.5
  data.grayscale_prob = 0.1
  data.max_side = 0  # resize so that the longer side is at most this; 0 = never.
  # Head points shipped per crop; 0: the training split's largest image count, rounded up
  # to a multiple of points_multiple (cfrnet_jax/data/pipeline.py, max_points_per_crop),
  # so no crop can overflow; the rounding lets splits of similar density share a shape.
  data.max_points = 0
  data.points_multiple = 256
  data.mean = (0.485, 0.456, 0.406)  # ImageNet, as the VGG16-BN weights expect.
  data.std = (0.229, 0.224, 0.225)
  # grain worker processes for decoding and cropping; 0 = inline; -1 = one per CPU core
  # this process may use, less one for the training loop, at most max_auto_workers
  # (beyond it, more workers only cost memory).
  data.num_workers = -1
  data.max_auto_workers = 16
  data.worker_buffer_size = 2
  data.device_prefetch = 2  # global batches copied to the devices ahead of the step.
  return data


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # parameters, data order and augmentation.
  config.batch_size = 4  # global: 4 crops per step (section 4.1).
  config.mesh_axes = ("data",)
  config.model = get_model_config()
  config.data = get_data_config()

  config.targets = ml_collections.ConfigDict()
  config.targets.sigma = 4.0  # fixed Gaussian sigma in pixels (section 4).
  config.targets.foreground_radius = 8.0  # half-side in pixels of a head's foreground box.

  config.loss = ml_collections.ConfigDict()
  config.loss.gamma = 1.0  # weight of the segmentation cross-entropy (Eq. 12).
  # Balance of the heads' density terms (cfrnet_jax/training/losses.py): "area" weighs
  # every level alike (chosen by benchmarks/real_data_study.py, docs/real_data_study.md);
  # "sum" is Eq. 11 as written, where a level's term grows with its stride squared.
  # level_weights multiplies each head's term.
  config.loss.level_balance = "area"
  config.loss.level_weights = ml_collections.ConfigDict(
      {"f1": 1.0, "f2": 1.0, "f3": 1.0, "f5": 1.0}
  )

  # Training (section 4.1: Adam, learning rate 1e-5, 4 crops per step). The paper gives
  # no step count or schedule; 100k steps at a constant rate is our choice.
  config.learning_rate = 1e-5
  config.lr_schedule = "constant"  # or "cosine" (to 0 at num_train_steps)
  config.num_train_steps = 100_000
  # Training steps per compiled call (lax.scan over this many batches): logging,
  # evaluation, checkpoints and preemption happen between calls. Same results.
  config.steps_per_jit = 1
  config.log_every_steps = 100
  config.eval_every_steps = 5_000
  config.checkpoint_every_steps = 1_000
  config.keep_checkpoints = 3  # the latest k, plus the 2 best by MAE (ranked runs).
  # SIGTERM (a preempted VM): the run ends within this many seconds, saving the step it
  # finished when at least preemption_save_fraction of that time is left (a save takes
  # seconds; cfrnet_jax/training/preemption.py); clouds allow about 30.
  config.preemption_grace_s = 20.0
  config.preemption_save_fraction = 0.5
  # The backbone's start (cfrnet_jax/models/pretrained.py, resolve_backbone_weights):
  # "imagenet" (downloaded, checked, converted and cached once, as the paper starts), a
  # path or URL of a .msgpack / .pth / .safetensors file, or "none" (random weights).
  config.backbone_weights = "imagenet"
  # Without a validation split: also rank checkpoints by their test MAE, so that the best
  # on test is restored by evaluate / predict. Optimistic (chosen on the test data
  # itself); results say so ("selection": "best_on_test").
  config.best_on_test = False
  # Fine-tuning (cfrnet_jax/training/finetune.py): the workdir of a trained run whose
  # model (its config.json's model fields, parameters and BatchNorm statistics) this run
  # starts from, with a fresh optimizer and data position; backbone_weights is then not
  # used. init_step: that run's checkpoint step (None: the run's result).
  config.init_from = ""
  config.init_step = ml_collections.FieldReference(None, field_type=int)
  # Parts of the model kept fixed in training (parameters and BatchNorm statistics),
  # comma separated: backbone, gam, compressors, hierarchical_decoder, axial_decoder,
  # heads. "" trains everything.
  config.freeze = ""

  # launch.py --mode predict / CrowdCounter (cfrnet_jax/inference).
  config.predict = ml_collections.ConfigDict()
  # Sides longer than this are cut into overlapping tiles (cfrnet_jax/inference/tiling.py).
  # 2048 keeps the paper model's inference within about 6 GB (docs/performance.md).
  config.predict.tile_size = 2048
  config.predict.tile_overlap = 256  # >= 128 px of context on each side of a kept cell.
  config.predict.overlay_max_side = 2048  # longer side of the overlay pictures.
  # Pictures whose header declares more million pixels are refused before decoding
  # (decompression bombs); 250 admits 12,000 x 9,000 (108 Mpx) and 150 Mpx cameras.
  # It replaces Pillow's own limit (cfrnet_jax/inference/user_images.py).
  config.predict.max_megapixels = 250.0
  config.predict.batch_size = 4  # video frames per forward pass (one compilation).
  # Head points from the density map (cfrnet_jax/localization.py), also scored at
  # evaluation: "peaks" (local maxima) or "count" (exactly the rounded count).
  config.predict.point_method = "peaks"
  config.predict.point_threshold = 0.05  # people per 4x4 cell for a peak to be a head.
  config.predict.point_min_distance = 8.0  # pixels between two peaks.
  return config


# Fields added with a default that trains or selects differently from what the code did
# before they existed: for a saved config without them, `complete` fills in the value that
# run had, not today's default.
#   loss.level_balance  runs saved before it trained with Eq. 11 as written ("sum");
#   best_on_test        runs saved before it (and before data.validation) ranked every
#                       checkpoint by its evaluation MAE.
# Every other field added since fills with today's default, which is what the code did
# before it existed (model.density_init: Flax's lecun_normal; model.foreground_gate: no
# gate; model.remat, model.attention: none, xla; loss.level_weights: all 1;
# data.validation, data.test_split: none), or says how to run, not what was trained
# (predict.*, preemption_grace_s, preemption_save_fraction, data.device_prefetch,
# data.max_auto_workers, data.points_multiple). Fields whose default changed but
# that every saved config holds (data.max_points, data.num_workers, backbone_weights) keep
# their saved values.
DEFAULTS_OF_OLDER_RUNS = {
    "loss.level_balance": "sum",
    "best_on_test": True,
}


def complete(saved: dict) -> ml_collections.ConfigDict:
  """A run's saved `config.json` (as a dict), with the sections and fields it lacks (a run
  saved before they existed) filled in: by `DEFAULTS_OF_OLDER_RUNS` where the default
  changed since, else by today's defaults. Saved values win; fields that are no longer
  used are kept and ignored. `saved` itself is left as it is."""
  copied = lambda values: {k: copied(v) if isinstance(v, dict) else v for k, v in values.items()}
  saved = copied(saved)
  for path, value in DEFAULTS_OF_OLDER_RUNS.items():
    *sections, name = path.split(".")
    values = saved
    for section in sections:
      values = values.setdefault(section, {})
    values.setdefault(name, value)

  def fill(values: dict, defaults: dict) -> dict:
    for key, default in defaults.items():
      if key not in values:
        values[key] = default
      elif isinstance(values[key], dict) and isinstance(default, dict):
        fill(values[key], default)
    return values

  return ml_collections.ConfigDict(fill(saved, get_config().to_dict()))
