"""The tiny model for tests: CFRNet's full structure with the narrowest channels.

Same layers, windows, switches, heads and loss as the paper's model; a forward and
backward pass takes well under a second on 2 CPU cores. Trains on `synthetic_crowd`
inline (no worker processes) and evaluates on 4 test images. Its counts mean nothing.

`configs/tiny.py:plain` (`get_config("plain")`) turns the four switches of the paper's
ablations off (GAM, DHP, the hierarchical and the axial decoder): the backbone, the
compressors and a density head per level. It traces and compiles in a fraction of the
full structure's time, for the tests of what does not depend on the model's parts: the
training loop, checkpoints, preemption, several processes (docs/testing.md).
"""

from configs import default

VARIANTS = ("", "plain")


def get_config(variant: str = ""):
  if variant not in VARIANTS:
    raise ValueError(f"configs/tiny.py:{variant}: the variants are {VARIANTS[1:]}.")
  config = default.get_config()
  config.model.update(
      vgg_widths=(8, 8, 16, 16, 16),
      channels=16,
      num_heads=2,
      gam_heads=2,
      head_channels=8,
      head_hidden_channels=8,
  )
  if variant == "plain":
    config.model.update(use_gam=False, use_dhp=False, hierarchical=False, axial=False)
  config.batch_size = 4
  config.data.num_workers = 0
  config.data.eval_split = "test[:4]"
  return config
