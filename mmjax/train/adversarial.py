"""Adversarial training on input embeddings (FGM, PGD), chosen by `config.adversarial`.

The attack perturbs what a tower computes from its input, not the input itself: the text
tower's token embeddings, the image and audio towers' patch embeddings (each tower's
`layers.perturbation_point`, the flax "perturbations" collection). A perturbation has the
shape of that embedding tensor, [B, T, width] per perturbed modality, and is bounded per
example (per row of the tower's batch): each modality's perturbation of one example lies
in its own ball of radius `eps`, in L2 over the whole [T, width] tensor or in L-infinity.

  fgm  Fast gradient method (Goodfellow et al. 2015; Miyato et al. 2017 on embeddings):
       one gradient g of the loss with respect to the perturbation at zero, then
       delta = eps * g / ||g||_2 (norm "l2", so ||delta|| = eps) or eps * sign(g) ("linf").
  pgd  Projected gradient descent (Madry et al. 2018): from zero (or, with `random_start`,
       a random point of the ball), `steps` ascent steps of size `step_size` along
       g / ||g||_2 (or sign(g)), each followed by projection back onto the eps-ball.

An example whose loss has no gradient at the perturbation point (a padding example, a
padded text position) gets no perturbation there.

The attack runs with the parameters held constant (`stop_gradient`) and the result is
itself a constant: the update differentiates the loss at the perturbed point, not
through the attack. The training loss is

  loss = clean_loss + weight * adv_loss      (clean=True)
  loss = weight * adv_loss                   (clean=False: adversarial loss only)

where both losses use the step's dropout keys (one dropout mask for the clean, attacked
and adversarial passes). The step reports `clean_loss`, `adv_loss`, `adv_accuracy` (when
the task reports an accuracy) and `adv_delta_norm`, the largest per-example perturbation
norm in the batch (<= eps). Cost: FGM adds two forward-backward passes to a step, PGD
`steps + 1`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from mmjax.config import ConfigError, check_fields
from mmjax.config import modalities as config_modalities
from mmjax.models.layers import PERTURBATIONS

KINDS = ("fgm", "pgd")
NORMS = ("l2", "linf")
# Towers with a perturbation point (`layers.perturbation_point`).
PERTURBABLE = ("image", "text", "audio")
# Below this, a gradient or perturbation norm counts as zero (no direction to follow).
_TINY = 1e-12

Perturbations = Any  # {"<modality>_encoder": {"embeddings": [B, T, D]}}


@dataclasses.dataclass(frozen=True)
class Adversarial:
  """`config.adversarial` (see the module docstring).

  Attributes:
    kind: one of KINDS.
    eps: radius of each example's perturbation ball (per modality), > 0.
    steps: PGD ascent steps (FGM takes one, unscaled by step_size).
    step_size: PGD step length; 0 means 2.5 * eps / steps (Madry et al.), so the
      iterates can reach the boundary from any start.
    weight: weight of the adversarial loss.
    clean: add the clean loss (True) or train on the adversarial loss alone.
    modalities: which towers' embeddings are perturbed, some of PERTURBABLE.
    norm: "l2" or "linf", the ball's norm.
    random_start: PGD starts at a random point of the ball instead of zero.
  """

  kind: str
  eps: float
  steps: int = 3
  step_size: float = 0.0
  weight: float = 1.0
  clean: bool = True
  modalities: tuple[str, ...] = ("text",)
  norm: str = "l2"
  random_start: bool = False

  def __post_init__(self):
    field = "config.adversarial"
    if self.kind not in KINDS:
      raise ConfigError(f"{field}.kind: unknown attack '{self.kind}'; expected '' (off) or "
                        f"one of {', '.join(KINDS)}")
    if self.norm not in NORMS:
      raise ConfigError(f"{field}.norm: unknown norm '{self.norm}'; expected one of "
                        f"{', '.join(NORMS)}")
    for name in ("eps", "weight"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{field}.{name}: expected a positive number, got {value!r}")
    if (isinstance(self.step_size, bool) or not isinstance(self.step_size, (int, float))
        or self.step_size < 0):
      raise ConfigError(f"{field}.step_size: expected a number >= 0 (0: 2.5 * eps / steps), "
                        f"got {self.step_size!r}")
    if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
      raise ConfigError(f"{field}.steps: expected a positive integer, got {self.steps!r}")
    for name in ("clean", "random_start"):
      if not isinstance(getattr(self, name), bool):
        raise ConfigError(f"{field}.{name}: expected True or False, got "
                          f"{getattr(self, name)!r}")
    modalities = self.modalities
    if isinstance(modalities, str):
      modalities = tuple(m.strip() for m in modalities.split(",") if m.strip())
    modalities = tuple(modalities)
    unknown = [m for m in modalities if m not in PERTURBABLE]
    if not modalities or unknown:
      raise ConfigError(f"{field}.modalities: expected some of {', '.join(PERTURBABLE)}, got "
                        f"{', '.join(modalities) or '(none)'}")
    object.__setattr__(self, "modalities", modalities)

  @property
  def alpha(self) -> float:
    """The PGD step length."""
    return self.step_size or 2.5 * self.eps / self.steps


def from_config(config: ml_collections.ConfigDict) -> Adversarial | None:
  """`config.adversarial` as Adversarial; None when absent or while `kind` is ""."""
  spec = config.get("adversarial", None)
  if not spec:
    return None
  spec = spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)
  check_fields("config.adversarial", spec,
               {f.name for f in dataclasses.fields(Adversarial)})
  if not spec.get("kind", ""):
    return None
  if "eps" not in spec:
    raise ConfigError("config.adversarial.eps: required when kind is set (the radius of "
                      "the perturbation ball), e.g. eps=1.0")
  adversarial = Adversarial(**spec)
  if config.get("model", None) is not None and isinstance(
      config.model.get("modalities", None), str):
    absent = [m for m in adversarial.modalities if m not in config_modalities(config)]
    if absent:
      raise ConfigError(f"config.adversarial.modalities: {', '.join(absent)} is not among "
                        f"the run's modalities {config.model.modalities}")
  return adversarial


def per_example_norm(x: jax.Array, norm: str) -> jax.Array:
  """x [B, ...] -> [B] float32: each example's L2 or L-infinity norm over all its entries."""
  flat = x.reshape(x.shape[0], -1).astype(jnp.float32)
  if norm == "l2":
    return jnp.sqrt(jnp.sum(flat * flat, axis=1))
  return jnp.max(jnp.abs(flat), axis=1)


def _per_example(scale: jax.Array, x: jax.Array) -> jax.Array:
  """[B] -> [B, 1, ...] broadcastable against x."""
  return scale.reshape(-1, *([1] * (x.ndim - 1)))


def ascent_direction(g: jax.Array, norm: str) -> jax.Array:
  """The per-example steepest-ascent direction of unit `norm` for gradient g [B, ...]
  (float32): g / ||g||_2 for "l2", sign(g) for "linf"; zero where g is zero."""
  g = g.astype(jnp.float32)
  if norm == "linf":
    return jnp.sign(g)
  return g / _per_example(jnp.maximum(per_example_norm(g, "l2"), _TINY), g)


def project(delta: jax.Array, eps: float, norm: str) -> jax.Array:
  """delta [B, ...] projected per example onto the `norm` ball of radius eps."""
  if norm == "linf":
    return jnp.clip(delta, -eps, eps)
  scale = jnp.minimum(1.0, eps / jnp.maximum(per_example_norm(delta, "l2"), _TINY))
  return delta * _per_example(scale, delta).astype(delta.dtype)


def random_start(rng: jax.Array, like: jax.Array, eps: float, norm: str) -> jax.Array:
  """A random point of each example's ball: uniform per coordinate in [-eps, eps] (linf);
  a Gaussian direction at a radius uniform in [0, eps] (l2)."""
  if norm == "linf":
    return jax.random.uniform(rng, like.shape, jnp.float32, -eps, eps)
  direction_rng, radius_rng = jax.random.split(rng)
  direction = ascent_direction(jax.random.normal(direction_rng, like.shape), "l2")
  radius = jax.random.uniform(radius_rng, (like.shape[0],), jnp.float32, 0.0, eps)
  return direction * _per_example(radius, like)


def attack(loss_of: Callable[[Perturbations], jax.Array], zeros: Perturbations,
           adversarial: Adversarial, rng: jax.Array) -> Perturbations:
  """The FGM or PGD perturbation (a tree like `zeros`) that raises `loss_of(delta)`.

  Each leaf [B, ...] is one modality's perturbation, bounded per example on its own.
  """
  grad = jax.grad(lambda delta: loss_of(delta).astype(jnp.float32))
  eps, norm = adversarial.eps, adversarial.norm
  cast = lambda tree: jax.tree.map(lambda x, z: x.astype(z.dtype), tree, zeros)  # noqa: E731
  if adversarial.kind == "fgm":
    return cast(jax.tree.map(lambda g: eps * ascent_direction(g, norm), grad(zeros)))
  if adversarial.random_start:
    leaves, treedef = jax.tree.flatten(zeros)
    rngs = jax.random.split(rng, len(leaves))
    start = cast(treedef.unflatten([random_start(r, z, eps, norm)
                                    for r, z in zip(rngs, leaves, strict=True)]))
  else:
    start = zeros

  def step(_, delta):
    return cast(jax.tree.map(
        lambda d, g: project(d.astype(jnp.float32) + adversarial.alpha * ascent_direction(
            g, norm), eps, norm), delta, grad(delta)))

  return jax.lax.fori_loop(0, adversarial.steps, step, start)


def zero_perturbations(apply: Callable[..., Any], variables: Mapping[str, Any],
                       modalities: tuple[str, ...]) -> Perturbations:
  """Zeros shaped like the embeddings of `modalities`' towers: {"<modality>_encoder":
  {"embeddings": [B, T, D]}}, found by `apply(variables, mutable=[PERTURBATIONS])` (the
  model's apply on the batch; evaluated abstractly, nothing runs)."""
  _, state = jax.eval_shape(lambda v: apply(v, mutable=[PERTURBATIONS]), variables)
  found = dict(state.get(PERTURBATIONS, {}))
  wanted = {f"{modality}_encoder": modality for modality in modalities}
  missing = [modality for key, modality in wanted.items() if key not in found]
  if missing:
    present = sorted(key.removesuffix("_encoder") for key in found)
    raise ConfigError(f"config.adversarial.modalities: this model has no embeddings to "
                      f"perturb for {', '.join(missing)}; it has: "
                      f"{', '.join(present) or 'none'}")
  return {key: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), found[key])
          for key in wanted}


def adversarial_loss(loss_of: Callable[[Mapping[str, Any]], tuple[jax.Array, dict]],
                     variables: Mapping[str, Any], zeros: Perturbations,
                     adversarial: Adversarial, rng: jax.Array
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(training loss, metrics) of the clean and the attacked pass (module docstring).

  Args:
    loss_of: variables (with or without PERTURBATIONS) -> (task loss, task metrics).
    variables: {"params": ...}, what the clean pass applies.
    zeros: `zero_perturbations`: the perturbations' tree and shapes.
    rng: for PGD's random start.

  The metrics are the clean pass's, with `loss` the training loss, and `clean_loss`,
  `adv_loss`, `adv_accuracy` (when the task reports `accuracy`), `adv_delta_norm`.
  """
  clean_loss, metrics = loss_of(variables)
  frozen = jax.lax.stop_gradient(dict(variables))
  delta = attack(lambda d: loss_of({**frozen, PERTURBATIONS: d})[0], zeros, adversarial, rng)
  delta = jax.lax.stop_gradient(delta)
  adv_loss, adv_metrics = loss_of({**variables, PERTURBATIONS: delta})
  total = adversarial.weight * adv_loss
  if adversarial.clean:
    total = clean_loss + total
  metrics = dict(metrics, loss=total, clean_loss=clean_loss, adv_loss=adv_loss,
                 adv_delta_norm=jnp.max(jnp.stack([
                     jnp.max(per_example_norm(d, adversarial.norm))
                     for d in jax.tree.leaves(delta)])))
  if "accuracy" in adv_metrics:
    metrics["adv_accuracy"] = adv_metrics["accuracy"]
  return total, metrics
