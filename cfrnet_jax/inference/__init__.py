"""Inference on the user's own pictures: `CrowdCounter`, tiles, overlays, predict mode."""

from cfrnet_jax.inference.counter import CrowdCounter, Prediction

__all__ = ["CrowdCounter", "Prediction"]
