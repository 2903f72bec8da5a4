"""The training step: the state it updates and the pure function that updates it.

`make_train_step` returns `(state, batch) -> (state, metrics)`, a pure function of the
explicit `TrainState` and one global batch of crops (`data.pipeline.TrainCrop`'s fields
with a leading batch axis): the model is rebuilt from its static graph definition and
the state's parameters and BatchNorm statistics, the density targets are rendered from
the padded head points inside the step (section 4), the loss is Eq. 12 with the config's
balance of levels, Adam updates the parameters (section 4.1), and a non-finite loss leaves
the state untouched and records its step in `state.nonfinite_step`. `make_train_steps`
runs `config.steps_per_jit` of them in one call; `jit_train_step` jits them with the
state's and the batches' shardings. The training loop is `training.trainer`.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from cfrnet_jax.data.device_ops import normalize_images
from cfrnet_jax.data.targets import batch_density_targets
from cfrnet_jax.models.cfrnet import HEAD_STRIDES
from cfrnet_jax.state import init_variables, split_model
from cfrnet_jax.training import finetune, sharding
from cfrnet_jax.training.losses import cfrnet_loss


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training. All randomness after initialisation is
  the data order and augmentation, drawn by grain from `config.seed` and saved as the
  iterator's state next to this."""

  step: jax.Array
  params: dict
  batch_stats: dict
  opt_state: Any
  nonfinite_step: jax.Array  # first step whose loss was NaN or inf; -1 if none.


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam (section 4.1). `lr_schedule`: "constant" (the paper) or "cosine" (decay to 0
    over `num_train_steps`, for short runs such as the CPU quick start). The parts
  `config.freeze` names get no updates (`finetune.without_updates`)."""
  if config.learning_rate is None:
    raise ValueError(
        "learning_rate is None: launch.py settles it (the source run's with init_from, "
        "configs/base.py's without); a config built in Python sets one or passes through "
        "cfrnet_jax.training.finetune.inherit_model and default_learning_rate."
    )
  if config.lr_schedule == "constant":
    learning_rate = config.learning_rate
  elif config.lr_schedule == "cosine":
    learning_rate = optax.cosine_decay_schedule(config.learning_rate, config.num_train_steps)
  else:
    raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {config.lr_schedule!r}.")
  return finetune.without_updates(optax.adam(learning_rate), finetune.frozen_parts(config))


def _init_fn(config: ml_collections.ConfigDict):
  tx = create_optimizer(config)

  def init() -> TrainState:
    params, batch_stats = init_variables(config.model, config.seed)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        nonfinite_step=jnp.full((), -1, jnp.int32),
    )

  return init


def abstract_train_state(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
) -> tuple[TrainState, Any]:
  """The state's shapes, dtypes and shardings, computed without allocating it, and its
  sharding tree: parameters replicated over the mesh (a model axis would change only
  this function)."""
  shapes = jax.eval_shape(_init_fn(config))
  state_sharding = jax.tree.map(lambda _: sharding.replicated(mesh), shapes)
  abstract = jax.tree.map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, state_sharding
  )
  return abstract, state_sharding


def create_train_state(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
) -> tuple[TrainState, Any]:
  """The initial state, created directly with its sharding, and that sharding."""
  _, state_sharding = abstract_train_state(config, mesh)
  return jax.jit(_init_fn(config), out_shardings=state_sharding)(), state_sharding


def step_inputs(config: ml_collections.ConfigDict, batch: dict) -> tuple[jax.Array, dict]:
  """What the training step makes of a batch before the model: the normalised images and
  the density/foreground targets at every head stride (`batch_density_targets`). Traceable;
  `batch` holds the fields of `data.pipeline.TrainCrop` with a leading batch axis."""
  images = normalize_images(batch["image"], batch["valid_size"], config.data.mean, config.data.std)
  targets = batch_density_targets(
      batch["points"],
      batch["valid"],
      images.shape[1:3],
      valid_size=batch["valid_size"],
      strides=sorted(set(HEAD_STRIDES.values())),
      sigma=config.targets.sigma,
      foreground_radius=config.targets.foreground_radius,
  )
  return images, targets


def make_train_step(config: ml_collections.ConfigDict, graphdef: nnx.GraphDef):
  """The pure step `(state, batch) -> (state, metrics)`; `batch` holds the fields of
  `data.pipeline.TrainCrop` with a leading global-batch axis."""
  tx = create_optimizer(config)
  frozen = finetune.frozen_parts(config)

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    images, targets = step_inputs(config, batch)

    def loss_fn(params):
      model = nnx.merge(graphdef, finetune.stop_gradients(params, frozen), state.batch_stats)
      model.train()
      finetune.hold_statistics(model, frozen)
      outputs = model(images)
      loss, terms = cfrnet_loss(
          outputs,
          targets,
          config.loss.gamma,
          config.model.density_scale,
          config.loss.level_balance,
          config.loss.level_weights.to_dict(),
      )
      counts = outputs["density"].astype(jnp.float32).sum(axis=(1, 2, 3))
      return loss, (terms, split_model(model)[1].batch_stats, counts)

    (loss, (terms, batch_stats, counts)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss)
    keep_if_finite = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = state.replace(
        step=state.step + 1,
        params=keep_if_finite(params, state.params),
        batch_stats=keep_if_finite(batch_stats, state.batch_stats),
        opt_state=keep_if_finite(opt_state, state.opt_state),
        nonfinite_step=jnp.where(
            ~finite & (state.nonfinite_step < 0), state.step, state.nonfinite_step
        ),
    )
    metrics = {
        "loss": loss,
        **terms,
        "grad_norm": optax.tree.norm(grads),
        "param_norm": optax.tree.norm(state.params),
        "crop_count_mae": jnp.mean(jnp.abs(counts - targets["count"])),
    }
    return new_state, metrics

  return train_step


def make_train_steps(config: ml_collections.ConfigDict, graphdef: nnx.GraphDef):
  """`config.steps_per_jit` = K training steps in one call: `(state, batches) -> (state,
  metrics)` with K batches stacked on a leading axis, run by `lax.scan` (metrics of each
  step, stacked); the single step when K = 1. K steps in one call leave the host out of
  the devices' way between steps: at small batches, dispatch and host round trips
  otherwise take much of a step's time."""
  step = make_train_step(config, graphdef)
  if config.steps_per_jit == 1:
    return step
  return lambda state, batches: jax.lax.scan(step, state, batches)


def jit_train_step(config, graphdef, mesh, state_sharding):
  """`make_train_steps` jitted with the state's and the batches' shardings, donating the
  old state."""
  return jax.jit(
      make_train_steps(config, graphdef),
      in_shardings=(state_sharding, sharding.data_sharding(mesh, config.steps_per_jit > 1)),
      out_shardings=(state_sharding, sharding.replicated(mesh)),
      donate_argnums=0,
  )
