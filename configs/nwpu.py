"""NWPU-Crowd (paper MAE 67.5). Images are up to 4000+ px wide; the longer side is resized
to at most 2048 (our choice: heads stay resolvable and full images fit in memory).
Evaluation uses `val` (the test split is unlabeled)."""

from configs import base


def get_config():
  config = base.get_config()
  config.data.name = "nwpu_crowd"
  config.data.eval_split = "val"
  config.data.validation = True  # the best on val; test is unlabeled (--split test)
  config.data.max_side = 2048
  return config
