"""cfrnet-jax: CFRNet (Yin & Yin, ACML 2024) for crowd counting in JAX/Flax NNX."""

from cfrnet_jax.models.cfrnet import CFRNet, HEAD_STRIDES, build_model

__all__ = ["CFRNet", "HEAD_STRIDES", "build_model"]
