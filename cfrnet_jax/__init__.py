"""cfrnet-jax: CFRNet (Yin & Yin, ACML 2024) for crowd counting in JAX/Flax NNX.

Packages by role:
  models/      the network (Flax NNX modules, one paper concept each) and the ImageNet
               VGG16-BN weight port;
  data/        image geometry, the grain input pipeline, device-side ops, targets;
  training/    the training loop, loss, sharding;
  inference/   counting the user's pictures: CrowdCounter, tiling, overlays;
and, shared by all of them, `state` (model structure and variables), `checkpointing`
(Orbax saves and restores) with `checkpoint_repair` (damaged checkpoints) and
`orbax_noise` (what a failed read prints), `run_config` (a run's `config.json` and what a
later use must share with it), `workdir_lock` (one training run per workdir),
`evaluation` (whole-image counts and metrics) and `cross_validation` (UCF_CC_50's five
folds).
"""

from cfrnet_jax.models.cfrnet import HEAD_STRIDES, CFRNet, build_model

__all__ = ["CFRNet", "CrowdCounter", "HEAD_STRIDES", "build_model"]


def __getattr__(name: str):
  # Imported on first use: the counter brings Orbax and grain, which building a model
  # does not need.
  if name == "CrowdCounter":
    from cfrnet_jax.inference.counter import CrowdCounter

    return CrowdCounter
  raise AttributeError(f"module 'cfrnet_jax' has no attribute {name!r}")
