"""The CPU quick start: CFRNet's full structure, shrunk, on `synthetic_crowd`.

Same layers, windows, heads and loss as `base.py`'s model, with narrow channels and
128-pixel crops so that it trains to a useful count on two CPU cores in a few minutes,
and a learning rate raised to match and decayed to zero (cosine) over the short run.
Not the paper's settings: see `base.py` and the dataset configs for those.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.update(
      vgg_widths=(16, 32, 64, 64, 64),
      channels=32,
      num_heads=4,
      gam_heads=4,
      head_channels=32,
      head_hidden_channels=16,
      density_scale=10.0,
  )
  config.backbone_weights = "none"  # the quick start needs no download
  config.data.name = "synthetic_crowd"
  config.data.crop_size = 128
  config.data.max_points = 128
  config.batch_size = 8
  config.learning_rate = 1e-3
  config.lr_schedule = "cosine"
  config.num_train_steps = 600
  config.log_every_steps = 50
  config.eval_every_steps = 600
  config.checkpoint_every_steps = 200
  return config
