"""The tiny model for tests: CFRNet's full structure with the narrowest channels.

Same layers, windows, switches, heads and loss as the paper's model; a forward and
backward pass takes well under a second on 2 CPU cores. Trains on `synthetic_crowd`
inline (no worker processes) and evaluates on 4 test images. Its counts mean nothing.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.update(
      vgg_widths=(8, 8, 16, 16, 16),
      channels=16,
      num_heads=2,
      gam_heads=2,
      head_channels=8,
      head_hidden_channels=8,
  )
  config.batch_size = 4
  config.data.num_workers = 0
  config.data.eval_split = "test[:4]"
  return config
