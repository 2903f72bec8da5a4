"""JHU-Crowd++ v2.0 (paper MAE 58.5): longer side resized to at most 1024 (section 4.1)."""

from configs import base


def get_config():
  config = base.get_config()
  config.data.name = "jhu_crowd"
  config.data.eval_split = "test"
  config.data.max_side = 1024
  return config
