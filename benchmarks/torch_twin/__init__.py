"""A PyTorch replica of cfrnet-jax's CFRNet: the cross-framework check and the speed
baseline (benchmarks/speed.py). `model.CFRNet(config.model)` builds it from the same
config; `convert.load_flax_state` copies a Flax model's parameters and BatchNorm
statistics into it."""
