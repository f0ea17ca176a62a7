"""The jitted train and predict steps over a mesh (data, fsdp, tensor), state donated."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding

from mmjax.train import adversarial as adversarial_lib
from mmjax.train.param_rules import merge_params, split_params
from mmjax.train.state import TrainState

Batch = dict[str, jax.Array]


def identity(params: Any) -> Any:
  return params


def tracing_mesh(mesh: Mesh | None) -> contextlib.AbstractContextManager:
  """The context the steps trace the model in: `mesh`'s abstract mesh, which
  `layers.constrain_batch` reads to pin activations at block boundaries."""
  return (jax.sharding.use_abstract_mesh(mesh.abstract_mesh) if mesh is not None
          else contextlib.nullcontext())


def make_train_step(model: nn.Module, task: Any, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, rng: jax.Array, *,
                    trainable: Any | None = None,
                    model_params: Callable[[Any], Any] = identity,
                    accum_steps: int = 1,
                    mesh: Mesh | None = None,
                    skip_nonfinite: bool = False,
                    adversarial: adversarial_lib.Adversarial | None = None,
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
  """One optimizer step on a global batch. Metrics are means over the global batch.

  Args:
    model, task: what to apply and the loss (`task.loss(logits, batch)`). A task whose
      `reads_intermediates` is true also gets the model's sown intermediates (attention
      logits) as `outputs["intermediates"]`.
    tx, schedule: the optimizer, initialised on the trainable parameters only.
    rng: dropout keys are `fold_in(rng, step)` and the "sample" stream's (negatives,
      masking in pre-training) `fold_in(fold_in(rng, step), 1)`, so a resumed run draws the
      same randomness.
    trainable: a tree like `state.params` of python bools (`param_rules.trainable_mask`);
      only True leaves are differentiated and updated, False leaves pass through
      untouched (bit-identical). None: everything trains.
    model_params: state params -> the tree `model.apply` takes (`lora.merge_lora`).
    accum_steps: > 1 splits the batch into that many micro-batches (examples i, i + k,
      i + 2k, ... form micro-batch i, so each device's shard feeds every micro-batch),
      runs them one after another (`lax.scan`, so activations of one micro-batch at a
      time) and averages their gradients and metrics before the one optimizer update:
      the same step as on the whole batch for losses that are means over the examples
      of full batches (classification, multiple choice). Losses averaged over tokens
      or steps (generation, MLM, captioning, knowledge tracing) become a mean of the
      micro-batches' means, and in-batch contrastive and ITM losses draw their
      negatives from the micro-batch.
      Micro-batch i's dropout key is `fold_in(fold_in(rng, step), 2 + i)`.
    mesh: the mesh the step runs on; activations are constrained to its batch axes at
      every Transformer block boundary (`layers.constrain_batch`).
    skip_nonfinite: a step whose loss or gradient norm is not finite leaves the
      parameters and optimizer state as they were (the step counter still advances, so
      the next step reads the next batch and draws new randomness).
    adversarial: `config.adversarial` (`adversarial.from_config`): each (micro-)batch's loss
      becomes the clean loss plus the weighted loss under an FGM or PGD perturbation of
      the towers' input embeddings (mmjax/train/adversarial.py), which also reports
      `clean_loss`, `adv_loss`, `adv_accuracy` and `adv_delta_norm`; PGD's random start
      draws from `fold_in(key, 2)` of the (micro-)batch's dropout key. None: off.

  Besides the task's metrics, the step reports `nonfinite` (1 when the loss or gradient
  norm is not finite), `nonfinite_grads` (how many gradient arrays hold a NaN or inf)
  and `nonfinite_grad` (the index of the first, in the gradient tree's leaf order; -1
  when none), which the loop turns into a stop with a report or a skipped update.
  """

  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
    with tracing_mesh(mesh):
      return _train_step(state, batch)

  def _train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
    step_rng = jax.random.fold_in(rng, state.step)
    if trainable is None:
      train_params, frozen = state.params, {}
    else:
      train_params, frozen = split_params(state.params, trainable)

    def loss_fn(train_params, batch, step_rng):
      params = train_params if trainable is None else merge_params(train_params, frozen)
      rngs = {"dropout": step_rng, "sample": jax.random.fold_in(step_rng, 1)}
      apply = lambda variables, **kw: model.apply(  # noqa: E731
          variables, batch, train=True, rngs=rngs, **kw)

      def task_loss(variables):
        if getattr(task, "reads_intermediates", False):
          outputs, state = apply(variables, mutable=["intermediates"])
          outputs = dict(outputs, intermediates=state["intermediates"])
        else:
          outputs = apply(variables)
        return task.loss(outputs, batch)

      variables = {"params": model_params(params)}
      if adversarial is None:
        return task_loss(variables)
      zeros = adversarial_lib.zero_perturbations(apply, variables, adversarial.modalities)
      return adversarial_lib.adversarial_loss(task_loss, variables, zeros, adversarial,
                                              jax.random.fold_in(step_rng, 2))

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accum_steps == 1:
      (_, metrics), grads = grad_fn(train_params, batch, step_rng)
    else:
      micro_batches = jax.tree.map(
          lambda x: x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]
                              ).swapaxes(0, 1), batch)

      def micro_step(carry, inputs):
        index, micro_batch = inputs
        (_, metrics), grads = grad_fn(train_params, micro_batch,
                                      jax.random.fold_in(step_rng, 2 + index))
        return jax.tree.map(jnp.add, carry, (grads, metrics)), None

      (_, metric_shapes), grad_shapes = jax.eval_shape(
          grad_fn, train_params, jax.tree.map(lambda x: x[0], micro_batches), step_rng)
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (grad_shapes, metric_shapes))
      (grads, metrics), _ = jax.lax.scan(micro_step, zeros,
                                         (jnp.arange(accum_steps), micro_batches))
      grads, metrics = jax.tree.map(lambda x: x / accum_steps, (grads, metrics))
    updates, opt_state = tx.update(grads, state.opt_state, train_params)
    new_train_params = optax.apply_updates(train_params, updates)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
    if skip_nonfinite:
      new_train_params, opt_state = jax.tree.map(
          lambda new, old: jnp.where(finite, new, old),
          (new_train_params, opt_state), (train_params, state.opt_state))
    params = new_train_params if trainable is None else merge_params(new_train_params, frozen)
    leaf_finite = jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)])
    metrics = dict(metrics, grad_norm=grad_norm,
                   param_norm=optax.tree.norm(params),
                   learning_rate=schedule(state.step),
                   nonfinite=(~finite).astype(jnp.int32),
                   nonfinite_grads=jnp.sum(~leaf_finite).astype(jnp.int32),
                   nonfinite_grad=jnp.where(jnp.all(leaf_finite), -1,
                                            jnp.argmin(leaf_finite)).astype(jnp.int32))
    return TrainState(state.step + 1, params, opt_state), metrics

  return train_step


def jit_train_step(train_step: Callable, state_sharding: Any, batch_sharding: NamedSharding,
                   metrics_sharding: NamedSharding) -> Callable:
  return jax.jit(train_step, in_shardings=(state_sharding, batch_sharding),
                 out_shardings=(state_sharding, metrics_sharding), donate_argnums=(0,))


def make_predict_step(model: nn.Module, task: Any, params_sharding: Any,
                      batch_sharding: NamedSharding, *,
                      model_params: Callable[[Any], Any] = identity
                      ) -> Callable[[Any, Batch], dict]:
  """(params, batch) -> the task's per-example predictions, sharded like the batch.

  `model_params` maps the state's parameters to the model's (`lora.merge_lora`).
  """

  def predict_step(params, batch: Batch) -> dict:
    with tracing_mesh(batch_sharding.mesh):
      return task.predict(model.apply({"params": model_params(params)}, batch, train=False))

  return jax.jit(predict_step, in_shardings=(params_sharding, batch_sharding),
                 out_shardings=batch_sharding)
