"""Flax NNX modules of CFRNet, one paper concept per module, and the ImageNet weight port."""
