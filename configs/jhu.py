"""JHU-Crowd++ v2.0 (paper MAE 58.5): longer side resized to at most 1024 (section 4.1)."""

from configs import base


def get_config():
  config = base.get_config()
  config.data.name = "jhu_crowd"
  config.data.eval_split = "val"  # the best checkpoint is chosen on val ...
  config.data.validation = True
  config.data.test_split = "test"  # ... and evaluated once on test at the end
  config.data.max_side = 1024
  return config
