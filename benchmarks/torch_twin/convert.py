"""Copies a Flax CFRNet's parameters and BatchNorm statistics into the PyTorch twin.

The twin mirrors the Flax module tree, so a Flax path maps to the same dotted PyTorch
path; only leaves change: conv kernels HWIO -> OIHW, dense kernels (in, out) -> weight
(out, in), `scale` -> `weight` (BatchNorm and LayerNorm), BatchNorm `mean`/`var` ->
`running_mean`/`running_var`. Every twin tensor must be filled exactly once with the
right shape (only `num_batches_tracked`, which Flax does not keep, is left alone).
"""

from __future__ import annotations

import numpy as np
import torch

_STAT_NAMES = {"mean": "running_mean", "var": "running_var"}


def _flatten(tree: dict, prefix: str = ""):
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, dict):
      yield from _flatten(value, path + ".")
    else:
      yield path, np.asarray(value, np.float32)


def _torch_entry(path: str, value: np.ndarray) -> tuple[str, np.ndarray]:
  parent, _, leaf = path.rpartition(".")
  if leaf == "kernel":
    value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    leaf = "weight"
  elif leaf == "scale":
    leaf = "weight"
  else:
    leaf = _STAT_NAMES.get(leaf, leaf)
  return f"{parent}.{leaf}" if parent else leaf, value


def flax_to_torch_state(params: dict, batch_stats: dict) -> dict[str, torch.Tensor]:
  state = {}
  for path, value in [*_flatten(params), *_flatten(batch_stats)]:
    name, value = _torch_entry(path, value)
    state[name] = torch.from_numpy(np.array(value, np.float32, order="C"))
  return state


def load_flax_state(model: torch.nn.Module, params: dict, batch_stats: dict) -> None:
  """Fills `model` (the twin) from Flax pure dicts (`nnx.to_pure_dict`); raises naming
  every missing, extra or wrongly shaped tensor."""
  state = flax_to_torch_state(params, batch_stats)
  expected = {
      name: tensor
      for name, tensor in model.state_dict().items()
      if not name.endswith("num_batches_tracked")
  }
  problems = [f"missing {name}" for name in sorted(set(expected) - set(state))]
  problems += [f"extra {name}" for name in sorted(set(state) - set(expected))]
  problems += [
      f"{name}: Flax {tuple(state[name].shape)} vs twin {tuple(tensor.shape)}"
      for name, tensor in expected.items()
      if name in state and state[name].shape != tensor.shape
  ]
  if problems:
    raise ValueError("The Flax state does not fit the twin: " + "; ".join(problems))
  model.load_state_dict(state, strict=False)
