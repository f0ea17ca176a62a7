"""Optax optimizer and learning-rate schedule from `config.optimizer` / `config.schedule`."""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax

from mmjax.config import ConfigError
from mmjax.train.param_rules import lr_multipliers, weight_decay_mask


def build_schedule(schedule_config: ml_collections.ConfigDict, peak_lr: float,
                   total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `peak_lr`, then cosine (or linear, or constant) decay to
  `peak_lr * end_factor` at `total_steps`."""
  warmup = schedule_config.warmup_steps
  end = peak_lr * schedule_config.end_factor
  if warmup >= total_steps:
    raise ConfigError(f"config.schedule.warmup_steps={warmup} must be below "
                      f"config.total_steps={total_steps}")
  if schedule_config.decay == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, peak_lr, warmup, total_steps, end)
  if schedule_config.decay == "linear":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak_lr, warmup),
         optax.linear_schedule(peak_lr, end, total_steps - warmup)], [warmup])
  if schedule_config.decay == "constant":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak_lr, warmup), optax.constant_schedule(peak_lr)],
        [warmup])
  raise ConfigError(f"config.schedule.decay: unknown decay '{schedule_config.decay}'; "
                    "expected cosine, linear or constant")


def scale_by_multipliers(mults: Any) -> optax.GradientTransformation:
  """Multiplies each leaf's update by its python-float multiplier (a tree like the
  parameters); stateless."""

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, m: u * m, updates, mults), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def build_optimizer(config: ml_collections.ConfigDict, params: Any
                    ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Gradient clipping by global norm, AdamW, then per-parameter learning-rate multipliers.

  Args:
    config: the experiment config (`optimizer`, `schedule`, `total_steps`).
    params: the parameters the optimizer updates (arrays or ShapeDtypeStructs): only the
      trainable ones, so frozen parameters get no optimizer state.

  Weight decay applies only to parameters matching `config.optimizer.weight_decay_rules`
  (by default kernels: not biases, norms, embeddings, positional embeddings or the [CLS]
  token). `config.optimizer.lr_mults = ((regex, mult), ...)` scales the final update of
  the first matching parameters (learning rate and weight decay alike); unmatched ones
  keep 1. A multiplier of 0 freezes a parameter: the caller leaves it out of `params`.
  """
  opt = config.optimizer
  schedule = build_schedule(config.schedule, opt.learning_rate, config.total_steps)
  transforms = []
  if opt.clip_norm:
    transforms.append(optax.clip_by_global_norm(opt.clip_norm))
  transforms.append(optax.adamw(
      schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay,
      mask=weight_decay_mask(params, opt.weight_decay_rules)))
  mults = lr_multipliers(params, opt.get("lr_mults", None) or ())
  if any(m != 1.0 for m in jax.tree.leaves(mults)):
    transforms.append(scale_by_multipliers(mults))
  return optax.chain(*transforms), schedule
