"""Model FLOPs counted from the program itself, and the model FLOPs utilisation (MFU).

Why not XLA's figure: XLA's cost analysis counts what XLA itself generates. On a GPU the
convolutions go to cuDNN and the matrix products to cuBLAS as custom calls, which it does
not count, so its figure for the paper model's training step is a small fraction of the
work (docs/performance.md). Here the work is read off the jaxpr, before any compiler:

* `dot_general`: 2 x (batch dims) x M x N x K, i.e. 2 x (output elements) x (product of
  the contracting dimensions).
* `conv_general_dilated`: 2 x (output elements) x (input channels per group) x (kernel
  taps), the usual count (taps over the zero padding included, as in 2*H*W*Cin*Cout*9
  for a 3x3 "same" convolution). The input channels per group are the kernel's input
  feature dimension, which covers `feature_group_count` and `batch_group_count` (the
  output batch then is already the lhs batch / groups). `rhs_dilation` spreads the taps
  without adding any. `lhs_dilation` (transposed convolutions: the input gradient of a
  strided one) inserts zeros between input elements; taps that land on those are not
  multiply-adds and are not counted, so the input gradient of a convolution costs what
  its forward does. The padding counts as input, as in the usual count; with lhs
  dilation d it holds the continuation of the lattice of input elements, so a tap counts
  when its position in the dilated input is a multiple of d in every dimension.
* a fused attention call (`jax.nn.dot_product_attention(implementation="cudnn")`, one
  primitive for cuDNN's kernel): forward 2*B*N*T*S*(Dqk + Dv), i.e. 4*B*N*T*S*D, the
  Q K^T and P V products of the XLA implementation; backward twice that (dQ, dK, dV and
  dP), leaving out the kernel's recomputation of Q K^T. Masks are not taken off.

Everything else (elementwise work, normalisation, softmax, reductions, gathers) is not
counted, as usual for model FLOPs.

Model FLOPs leave out recomputation: the count is the same whatever `config.model.remat`.
Every value of the program gets a number from its primitive, its parameters and the
numbers of its inputs (value numbering through the bodies of `jit`, `checkpoint`/remat
and custom_jvp/custom_vjp calls, which are read as if inlined); an operation whose number
has been counted once is not counted again. A remat block's recomputation in the backward
pass applies the same primitives to the same saved inputs as its forward pass, so it is
counted once, as is any other repeated evaluation of one value (the primal convolution
that `jax.vjp` recomputes in the CPU kernel gradient of `models/conv.py`). Operations
whose results nothing uses are left out (as XLA leaves them out). Loops: a `scan` body
counts `length` times; a `cond` counts its costliest branch; a `while` loop's trip count
is unknown before it runs, so one whose body or condition multiplies refuses the count
(`FlopCountError`), as does a kernel whose work cannot be read off its shapes
(`pallas_call`, FFI calls).

MFU, model FLOPs per step against the devices' peak, is `training.device_peaks`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.extend import core

CONVOLUTION, MATMUL, ATTENTION = "convolution", "matmul", "fused attention"

# Primitives whose body is evaluated once where they stand: read as if inlined.
_INLINED = {
    "jit",
    "pjit",
    "closed_call",
    "core_call",
    "remat",
    "remat2",
    "checkpoint",
    "custom_jvp_call",
    "custom_vjp_call",
    "custom_vjp_call_jaxpr",
}
# cuDNN's fused attention (jax/_src/cudnn/fused_attention_stablehlo.py): forward, backward.
_ATTENTION_FORWARD = {
    "dot_product_attention_fwd",
    "dot_product_attention_fwd_wrapper",
    "dot_product_attention_fp8_fwd",
    "dot_product_attention_fp8_fwd_wrapper",
}
_ATTENTION_BACKWARD = {
    "dot_product_attention_bwd",
    "dot_product_attention_bwd_wrapper",
    "dot_product_attention_fp8_bwd",
    "dot_product_attention_fp8_bwd_wrapper",
}
# Kernels and calls whose work their shapes do not tell.
_OPAQUE = {
    "pallas_call",
    "ffi_call",
    "custom_call",
    "triton_kernel_call",
    "mosaic_gpu_call",
    "cudnn_fusion",
    "ragged_dot",
    "ragged_dot_general",
}
# Per-device bodies: their count times the devices they run on is not read here.
_PER_DEVICE = {"shard_map", "xla_pmap"}
_ATTENTION_BTNH = 0  # cuDNN attention layouts: (batch, seq, heads, dim) or (b, heads, seq, dim)


class FlopCountError(ValueError):
  """The program holds work whose FLOPs cannot be read off its shapes."""


@dataclasses.dataclass(frozen=True)
class FlopCount:
  """Model FLOPs of one call of a program, by kind of operation, and what was not
  counted (empty when the count is complete)."""

  by_kind: dict[str, float]
  uncounted: tuple[str, ...] = ()

  @property
  def total(self) -> float:
    return float(sum(self.by_kind.values()))


def dot_general_flops(lhs_shape, out_shape, dimension_numbers) -> float:
  """2 x out elements x contracting size = 2 x batch x M x N x K."""
  (lhs_contracting, _), _ = dimension_numbers
  return 2.0 * math.prod(out_shape) * math.prod(lhs_shape[d] for d in lhs_contracting)


def conv_flops(rhs_shape, out_shape, params: dict) -> float:
  """2 x out elements x kernel input features x kernel taps, less the taps on the zeros
  that `lhs_dilation` inserts (module docstring); `params`: the primitive's."""
  _, rhs_spec, out_spec = params["dimension_numbers"]
  out_spatial = [out_shape[d] for d in out_spec[2:]]
  kernel = [rhs_shape[d] for d in rhs_spec[2:]]
  ndim = len(kernel)
  strides = params.get("window_strides") or (1,) * ndim
  lhs_dilation = params.get("lhs_dilation") or (1,) * ndim
  rhs_dilation = params.get("rhs_dilation") or (1,) * ndim
  padding = params["padding"]
  taps = 1
  for o, k, s, d, r, (low, _) in zip(
      out_spatial, kernel, strides, lhs_dilation, rhs_dilation, padding
  ):
    if d == 1:
      taps *= o * k
    else:  # the (output, tap) pairs on the input lattice: position divisible by d.
      position = np.arange(o)[:, None] * s + np.arange(k)[None, :] * r - low
      taps *= int((position % d == 0).sum())
  per_position = math.prod(out_shape) // max(math.prod(out_spatial), 1)
  return 2.0 * per_position * rhs_shape[rhs_spec[1]] * taps


def attention_flops(query_shape, key_shape, value_shape, layout: int) -> float:
  """Forward FLOPs of fused attention: 2*B*N*T*S*(Dqk + Dv) (Q K^T and P V)."""
  if layout == _ATTENTION_BTNH:
    batch, queries, heads, qk_dim = query_shape
    keys, value_dim = key_shape[1], value_shape[3]
  else:
    batch, heads, queries, qk_dim = query_shape
    keys, value_dim = key_shape[2], value_shape[3]
  return 2.0 * batch * heads * queries * keys * (qk_dim + value_dim)


def _shape(atom) -> tuple[int, ...]:
  return tuple(atom.aval.shape)


def _jaxpr_and_consts(value) -> tuple[core.Jaxpr, Sequence[Any]]:
  if isinstance(value, core.ClosedJaxpr):
    return value.jaxpr, value.consts
  return value, ()


def _body(eqn) -> Any:
  """The one jaxpr parameter of an inlined primitive."""
  for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
    if isinstance(eqn.params.get(key), (core.Jaxpr, core.ClosedJaxpr)):
      return eqn.params[key]
  raise FlopCountError(f"{eqn.primitive.name}: no body found among {sorted(eqn.params)}.")


def _sub_jaxprs(params: dict) -> list:
  found = []
  for value in params.values():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(item, (core.Jaxpr, core.ClosedJaxpr)):
        found.append(item)
  return found


class _Counter:
  """Value numbering and FLOP sums over one program (module docstring)."""

  def __init__(self):
    self.numbers: dict[Any, int] = {}
    self.counted: set[int] = set()
    self.by_kind: dict[str, float] = {CONVOLUTION: 0.0, MATMUL: 0.0, ATTENTION: 0.0}
    self.uncounted: list[str] = []
    self._texts: dict[int, str] = {}

  def number(self, key) -> int:
    return self.numbers.setdefault(key, len(self.numbers))

  def fresh(self) -> int:
    return self.number(("fresh", len(self.numbers)))

  def _freeze(self, value):
    if isinstance(value, (core.Jaxpr, core.ClosedJaxpr)):
      text = self._texts.get(id(value))
      if text is None:
        text = self._texts[id(value)] = str(value)
      return ("jaxpr", text)
    if isinstance(value, (tuple, list)):
      return tuple(self._freeze(v) for v in value)
    if isinstance(value, dict):
      return tuple(sorted((k, self._freeze(v)) for k, v in value.items()))
    if isinstance(value, np.ndarray):
      return ("array", value.shape, str(value.dtype), value.tobytes())
    try:
      hash(value)
    except TypeError:
      return ("repr", repr(value))
    return value

  def _const(self, value) -> int:
    array = np.asarray(value)
    content = array.tobytes() if array.size <= 4096 else id(value)
    return self.number(("const", array.shape, str(array.dtype), content))

  def _read(self, env, atom) -> int:
    if isinstance(atom, core.Literal):
      array = np.asarray(atom.val)
      return self.number(("literal", str(atom.aval), array.tobytes()))
    return env[atom]

  def charge(self, number: int, by_kind: dict[str, float], times: float = 1) -> None:
    """Adds `times` x `by_kind` unless value `number` was charged already."""
    if number not in self.counted:
      self.counted.add(number)
      for kind, flops in by_kind.items():
        self.by_kind[kind] += times * flops

  def run(self, jaxpr, consts, inputs: Sequence[int], live_outputs: Sequence[bool]) -> list:
    """Numbers of `jaxpr`'s outputs (None where dead) given its inputs' numbers."""
    env = dict(zip(jaxpr.invars, inputs))
    env.update((v, self._const(c)) for v, c in zip(jaxpr.constvars, consts))
    live = _live_equations(jaxpr, live_outputs)
    for eqn, (alive, live_outs) in zip(jaxpr.eqns, live):
      if not alive:
        continue
      ins = [self._read(env, v) for v in eqn.invars]
      outs = self.equation(eqn, ins, live_outs)
      env.update(zip(eqn.outvars, outs))
    return [self._read(env, v) if alive else None for v, alive in zip(jaxpr.outvars, live_outputs)]

  def equation(self, eqn, ins: list[int], live_outs: list[bool]) -> list:
    name = eqn.primitive.name
    if name in _INLINED:
      body, consts = _jaxpr_and_consts(_body(eqn))
      return self.run(body, consts, ins, live_outs)
    params = {k: v for k, v in eqn.params.items() if k not in ("name", "ctx_mesh")}
    key = (name, self._freeze(params), tuple(ins))
    number = self.number(key)
    outs = [self.number((number, i)) for i in range(len(eqn.outvars))]
    if name == "dot_general":
      flops = dot_general_flops(
          _shape(eqn.invars[0]), _shape(eqn.outvars[0]), eqn.params["dimension_numbers"]
      )
      self.charge(number, {MATMUL: flops})
    elif name == "conv_general_dilated":
      flops = conv_flops(_shape(eqn.invars[1]), _shape(eqn.outvars[0]), eqn.params)
      self.charge(number, {CONVOLUTION: flops})
    elif name in _ATTENTION_FORWARD or name in _ATTENTION_BACKWARD:
      q, k, v = (_shape(a) for a in eqn.invars[:3])
      flops = attention_flops(q, k, v, eqn.params.get("layout", _ATTENTION_BTNH))
      self.charge(number, {ATTENTION: flops * (2 if name in _ATTENTION_BACKWARD else 1)})
    elif name == "scan":
      self.charge(number, self._isolated(eqn.params["jaxpr"]).by_kind, eqn.params["length"])
    elif name == "cond":
      branches = [self._isolated(b) for b in eqn.params["branches"]]
      self.charge(number, max(branches, key=lambda c: c.total).by_kind)
    elif name == "while":
      inner = sum(self._isolated(eqn.params[k]).total for k in ("cond_jaxpr", "body_jaxpr"))
      if inner:
        self.uncounted.append(
            f"a while loop whose body multiplies ({inner:.3g} FLOPs per iteration): "
            "its trip count is unknown before it runs"
        )
    elif name in _OPAQUE:
      self.uncounted.append(f"{name}: work not readable from its shapes")
    elif name in _PER_DEVICE:
      self.uncounted.append(f"{name}: a per-device body, not counted")
    else:
      for sub in _sub_jaxprs(eqn.params):  # reductions', scatters' and sorts' combiners
        if self._isolated(sub).total:
          self.uncounted.append(f"{name}: a body that multiplies, not counted")
    return outs

  def _isolated(self, closed) -> FlopCount:
    """The FLOPs of one evaluation of `closed` on inputs of its own."""
    counter = _Counter()
    counter._texts = self._texts
    jaxpr, consts = _jaxpr_and_consts(closed)
    counter.run(jaxpr, consts, [counter.fresh() for _ in jaxpr.invars], [True] * len(jaxpr.outvars))
    self.uncounted.extend(counter.uncounted)
    return FlopCount(counter.by_kind)


def _live_equations(jaxpr, live_outputs: Sequence[bool]) -> list[tuple[bool, list[bool]]]:
  """Per equation: whether any of its results is used (or it has effects), and which."""
  needed = {v for v, alive in zip(jaxpr.outvars, live_outputs) if alive and isinstance(v, core.Var)}
  result = []
  for eqn in reversed(jaxpr.eqns):
    outs = [v in needed for v in eqn.outvars]
    alive = any(outs) or bool(eqn.effects)
    if alive:
      needed.update(v for v in eqn.invars if isinstance(v, core.Var))
    result.append((alive, outs if any(outs) else [True] * len(outs)))
  return result[::-1]


def count_jaxpr(closed: core.ClosedJaxpr) -> FlopCount:
  """Model FLOPs of one evaluation of `closed` (module docstring)."""
  counter = _Counter()
  jaxpr, consts = _jaxpr_and_consts(closed)
  counter.run(
      jaxpr,
      consts,
      [counter.number(("input", i)) for i in range(len(jaxpr.invars))],
      [True] * len(jaxpr.outvars),
  )
  return FlopCount(dict(counter.by_kind), tuple(dict.fromkeys(counter.uncounted)))


def count_flops(fn: Callable, *args, **kwargs) -> FlopCount:
  """Model FLOPs of `fn(*args, **kwargs)`, traced (nothing runs; arguments may be
  `jax.ShapeDtypeStruct`s), by kind, with what could not be counted."""
  return count_jaxpr(jax.make_jaxpr(fn)(*args, **kwargs))


def checked_total(count: FlopCount) -> float:
  """`count.total`, or FlopCountError when part of the program could not be counted."""
  if count.uncounted:
    raise FlopCountError("Model FLOPs not counted: " + "; ".join(count.uncounted) + ".")
  return count.total


def model_flops(fn: Callable, *args, **kwargs) -> float:
  """Model FLOPs of one call `fn(*args, **kwargs)`: 2 x multiply-adds of its
  convolutions, matrix products and fused attention, recomputation excluded (module
  docstring). Raises FlopCountError for work it cannot count (a while loop that
  multiplies, Pallas kernels, FFI calls) rather than return a figure too low."""
  return checked_total(count_flops(fn, *args, **kwargs))


def format_flops(flops: float) -> str:
  if flops >= 1e12:
    return f"{flops / 1e12:.2f} TFLOP"
  return f"{flops / 1e9:.2f} GFLOP"
