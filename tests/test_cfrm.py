import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cfrnet_jax.models.cfrm import (
    CrossLevelRelocation,
    key_positions,
    relative_position_index,
    relocated_positions,
    window_partition,
    window_reverse,
)

# One compiled program per shape: op by op, each operation compiles apart, several
# times as long on a CPU.
relocate = nnx.jit(lambda cfrm, high, low: cfrm(high, low))


def _param_count(module):
  return sum(x.size for x in jax.tree_util.tree_leaves(nnx.state(module, nnx.Param)))


def test_cfrm_adds_12c2_weights_plus_biases_norms_and_bias_table():
  c, heads, window = 256, 8, 8
  cfrm = nnx.eval_shape(lambda: CrossLevelRelocation(c, heads, window, 4, rngs=nnx.Rngs(0)))
  weights = 12 * c * c
  biases = 3 * c + c + 4 * c + c  # query+key/value, output projection, MLP in and out.
  norms = 2 * 2 * c  # two LayerNorms, scale and offset.
  table = (2 * window - 1) ** 2 * heads
  assert _param_count(cfrm) == weights + biases + norms + table


@pytest.mark.parametrize(
    "ratio, expected",
    [
        # Window 8. Low-resolution row a covers high rows [a r, (a + 1) r); the nearest
        # high row to that patch's centre a r + (r - 1) / 2 is a r + r / 2 (half-pixel rule).
        (2, [1, 3, 5, 7]),  # patches {0,1} {2,3} {4,5} {6,7}
        (4, [2, 6]),  # patches {0..3} {4..7}
        (8, [4]),  # one patch {0..7}
    ],
)
def test_relocated_positions_by_hand(ratio, expected):
  assert relocated_positions(8, ratio).tolist() == expected


def test_relocated_keys_and_bias_index_by_hand():
  # Window 4, ratio 2: 16 high-resolution tokens, then 4 low-resolution tokens placed at
  # rows/cols {1, 3}.
  keys = key_positions(4, 2)
  assert keys.shape == (20, 2)
  assert keys[:16].tolist() == [[i, j] for i in range(4) for j in range(4)]
  assert keys[16:].tolist() == [[1, 1], [1, 3], [3, 1], [3, 3]]
  index = relative_position_index(4, 2)
  assert index.shape == (16, 20)
  # Table of 7 x 7 offsets; entry of offset (dy, dx) is (dy + 3) * 7 + (dx + 3).
  # Query (0, 0) against low token (1, 3): offset (-1, -3) -> 2 * 7 + 0 = 14.
  assert index[0, 17] == 14
  # Query (3, 2) against low token (1, 1): offset (2, 1) -> 5 * 7 + 4 = 39.
  assert index[14, 16] == 39
  # A low token shares the bias entry of the high token at its relocated position.
  assert (index[:, 16] == index[:, 5]).all()  # (1, 1) is high token 5.


def test_window_partition_round_trip_and_order():
  x = jnp.arange(2 * 8 * 12 * 3, dtype=jnp.float32).reshape(2, 8, 12, 3)
  windows = window_partition(x, 4)
  assert windows.shape == (2 * 2 * 3, 16, 3)
  # The second window of the first image is rows 0..3, columns 4..7, row-major.
  np.testing.assert_array_equal(windows[1], x[0, :4, 4:8].reshape(16, 3))
  np.testing.assert_array_equal(window_reverse(windows, 4, 8, 12), x)


@pytest.mark.parametrize(
    "ratio, window, size", [(2, 4, 8), (4, 8, 16), (8, 8, 16), (2, 8, 24), (8, 16, 32)]
)
def test_cfrm_any_ratio_and_dividing_window(ratio, window, size):
  cfrm = CrossLevelRelocation(8, 2, window, 4, rngs=nnx.Rngs(0))
  high = jax.random.normal(jax.random.key(0), (2, size, size + window, 8))
  low = jax.random.normal(jax.random.key(1), (2, size // ratio, (size + window) // ratio, 8))
  out = relocate(cfrm, high, low)
  assert out.shape == high.shape
  assert np.isfinite(out).all()


def test_cfrm_mixes_only_matching_windows():
  """Output in window (0, 0) depends on the low-resolution tokens of the same image
  region and on nothing in other windows."""
  cfrm = CrossLevelRelocation(8, 2, 4, 4, rngs=nnx.Rngs(0))
  high = jax.random.normal(jax.random.key(0), (1, 8, 8, 8))
  low = jax.random.normal(jax.random.key(1), (1, 4, 4, 8))
  base = relocate(cfrm, high, low)
  # Change the low-resolution token of the bottom-right region only (not by a constant
  # over channels, which LayerNorm would remove).
  changed = relocate(cfrm, high, low.at[0, 3, 3].add(jnp.arange(8.0)))
  diff = np.abs(np.asarray(changed - base))[0].max(-1)
  assert diff[4:, 4:].min() > 0  # every token of the matching window reacts ...
  assert diff[:4].max() == 0 and diff[:, :4].max() == 0  # ... and no other window.


def test_cfrm_rejects_windows_that_do_not_fit():
  cfrm = CrossLevelRelocation(8, 2, 8, 4, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="window 8 must divide"):
    cfrm(jnp.zeros((1, 12, 16, 8)), jnp.zeros((1, 6, 8, 8)))
  with pytest.raises(ValueError, match="power of two"):
    cfrm(jnp.zeros((1, 16, 16, 8)), jnp.zeros((1, 6, 6, 8)))
