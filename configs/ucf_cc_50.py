"""UCF_CC_50 (paper MAE 174.1): five-fold cross-validation, `data.fold` = the test fold.
Images are at most 1024 px on the longer side already; max_side 1024 keeps it so."""

from configs import base


def get_config():
  config = base.get_config()
  config.data.name = "ucf_cc_50"
  config.data.fold = 0  # 0: all five folds in turn (and a summary); k: only fold k
  config.data.max_side = 1024
  return config
