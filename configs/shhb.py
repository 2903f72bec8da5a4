"""ShanghaiTech part B: sparse street scenes (paper MAE 6.4)."""

from configs import base


def get_config():
  config = base.get_config()
  config.data.name = "shanghaitech/part_b"
  return config
