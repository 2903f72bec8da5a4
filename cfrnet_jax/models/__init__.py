"""Flax NNX modules of CFRNet, one paper concept per module."""
