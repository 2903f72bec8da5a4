"""ShanghaiTech part A: dense web images, the paper's main benchmark (MAE 51.1)."""

from configs import base


def get_config():
  config = base.get_config()
  config.data.name = "shanghaitech/part_a"
  return config
