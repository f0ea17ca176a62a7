"""Regularisers: stochastic depth (per example, unbiased, linear over depth, also scanned and
rematerialised, off at evaluation), per-tower dropout, label smoothing against a hand
computation, and adversarial training on input embeddings (FGM and PGD stay in their
eps-ball, raise the loss, train, and leave the parameter gradient that of the perturbed
point)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mmjax.config import ConfigError
from mmjax.models.layers import (
  PERTURBATIONS,
  BlockOptions,
  Encoder,
  Tokens,
  drop_path,
  drop_path_rates,
  perturbation_point,
)
from mmjax.models.model import build_model, head_specs
from mmjax.tasks.classification import ClassificationTask
from mmjax.train import adversarial as adversarial_lib
from mmjax.train.adversarial import Adversarial, attack, per_example_norm
from mmjax.train.state import TrainState
from mmjax.train.step import make_train_step

RNG = jax.random.key(0)


# Concat fusion with one residual MLP block (it has dropout): the cheapest to compile.
FUSION = dict(kind="concat", depth=1, width=32, num_heads=2, mlp_dim=64)


def model_config(modalities="image,text", head_input="fused", **kw):
  return ml_collections.ConfigDict(dict(dict(
      modalities=modalities, dtype="float32", param_dtype="float32", dropout_rate=0.0,
      image=dict(variant="nano/4"), text=dict(variant="nano", max_len=8), fusion=FUSION,
      heads=dict(label=dict(input=head_input, pooling="mean"))), **kw))


def make_model(modalities="image,text", head_input="fused", **kw):
  config = model_config(modalities, head_input, **kw)
  mods = tuple(modalities.split(","))
  return build_model(config, modalities=mods, vocab_size=32,
                     heads=head_specs(config, mods, lambda name: 2))


def make_batch(size, seed=0, length=8):
  """Random image and text; the label says whether the text holds token 7 (text decides)."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(3, length + 1, size)
  mask = np.arange(length)[None] < lengths[:, None]
  ids = np.where(mask, rng.integers(5, 32, (size, length)), 0)
  ids[: size // 2, 1] = 7  # half the examples hold token 7 for sure
  label = ((ids == 7) & mask).any(axis=1)
  return {"image": jnp.asarray(rng.uniform(-1, 1, (size, 8, 8, 1)), jnp.float32),
          "text_ids": jnp.asarray(ids, jnp.int32), "text_mask": jnp.asarray(mask),
          "label": jnp.asarray(label, jnp.int32), "example_mask": jnp.ones(size, bool)}


# --- stochastic depth -----------------------------------------------------------------


def test_drop_path_drops_whole_examples_and_keeps_the_expectation():
  x = jax.random.normal(RNG, (4096, 3, 2)) + 2.0
  for rate in (0.3, 0.9):
    out = jax.jit(drop_path)(x, rate, jax.random.key(1))  # a traced rate, as when scanned
    dropped = np.asarray(jnp.all(out == 0, axis=(1, 2)))
    kept = np.all(np.isclose(out, x / (1 - rate), rtol=1e-5), axis=(1, 2))
    assert np.all(dropped ^ kept)  # each example whole: zero, or scaled by 1 / (1 - rate)
    assert abs(dropped.mean() - rate) < 0.03
    # Unbiased: over many examples the mean output is the mean branch.
    assert float(out.mean()) == pytest.approx(float(x.mean()), rel=0.08)


VARIANTS = {"unrolled": BlockOptions(), "scan": BlockOptions(scan=True),
            "remat": BlockOptions(remat="full")}


@functools.cache
def encoder_blocks(rate=0.6, depth=2):
  """2-block Encoders (unrolled, scanned, rematerialised) with drop path only (no dropout)
  on 2000 examples: {variant: [(training output, each block's (input, output)), same at
  evaluation]}, from flax's captured intermediates."""
  x = Tokens(jax.random.normal(RNG, (2000, 2, 8)), jnp.ones((2000, 2), bool))

  def run(options):
    encoder = Encoder(depth, 1, 8, options=options, final_norm=False, drop_path_rate=rate)
    variables = encoder.init(RNG, x, train=False)
    results = []
    for train in (True, False):
      out, state = encoder.apply(variables, x, train=train, capture_intermediates=True,
                                 rngs={"dropout": jax.random.key(3)})
      captured = state["intermediates"]
      if options.scan:
        stacked = captured["scanned_blocks"]["block"]["__call__"][0].tokens  # [depth, ...]
        outputs = [stacked[i] for i in range(depth)]
      else:
        outputs = [captured[f"block_{i}"]["__call__"][0].tokens for i in range(depth)]
      results.append((out.tokens, list(zip([x.tokens, *outputs[:-1]], outputs, strict=True))))
    return results

  return jax.jit(lambda: {name: run(options) for name, options in VARIANTS.items()})()


@pytest.mark.parametrize("variant", VARIANTS)
def test_drop_path_rate_grows_linearly_over_depth(variant):
  assert drop_path_rates(0.6, 2) == [0.3, 0.6]
  assert drop_path_rates(0.5, 1) == [0.5]
  (out, blocks), (_, eval_blocks) = encoder_blocks()[variant]
  for (inputs, outputs), rate in zip(blocks, [0.3, 0.6], strict=True):
    # A block is the identity for an example exactly when both its branches were dropped.
    identity = np.asarray(jnp.all(inputs == outputs, axis=(1, 2)))
    assert abs(identity.mean() - rate ** 2) < 0.03
  # At evaluation every block is itself: no example passes through unchanged.
  assert not any(bool(jnp.any(jnp.all(i == o, axis=(1, 2)))) for i, o in eval_blocks)
  if variant == "remat":  # rematerialised blocks draw the very same masks
    assert jnp.array_equal(out, encoder_blocks()["unrolled"][0][0])


@functools.cache
def fused_features():
  """Fusion outputs of one set of parameters under models that differ only in their rates,
  {(variant, train): [B, 1, 32]}, and the parameters each variant initialises."""
  batch = make_batch(4)
  text = dict(variant="nano", max_len=8)
  variants = {
      "base": make_model(),
      "drop_path": make_model(image=dict(variant="nano/4", drop_path_rate=0.5),
                              text=dict(text, drop_path_rate=0.5)),
      "image": make_model(image=dict(variant="nano/4", dropout_rate=0.5)),
      "fusion": make_model(fusion=dict(FUSION, dropout_rate=0.5)),
      # A tower at 0 under a global rate: the other tower and fusion drop, it does not.
      "not_text": make_model(dropout_rate=0.5, text=dict(text, dropout_rate=0.0)),
  }

  @jax.jit
  def run():
    params = {name: variants[name].init(RNG, batch, train=False)["params"]
              for name in ("base", "drop_path")}
    outputs = {}
    for name, model in variants.items():
      # Dropout is off at evaluation (flax's own contract); drop path is checked here.
      for train in {"base": (False,), "drop_path": (True, False)}.get(name, (True,)):
        towers, fused = model.apply({"params": params["base"]}, batch, train=train,
                                    method="features", rngs={"dropout": jax.random.key(1)})
        outputs[name, train] = {"fusion": fused.tokens.tokens,
                                **{m: tokens.tokens for m, tokens in towers.items()}}
    return params, outputs

  return run()


def test_drop_path_off_and_at_evaluation_leaves_the_model_unchanged():
  params, outputs = fused_features()
  # Same parameters (nothing added), and at evaluation the same outputs, bit for bit.
  assert jax.tree.all(jax.tree.map(jnp.array_equal, params["base"], params["drop_path"]))
  assert jax.tree.all(jax.tree.map(jnp.array_equal, outputs["base", False],
                                   outputs["drop_path", False]))
  # In training, rate 0.5 moves the towers and what fusion makes of them.
  for part in ("image", "text", "fusion"):
    assert not jnp.allclose(outputs["drop_path", True][part], outputs["drop_path", False][part])
  with pytest.raises(ConfigError, match=r"config.model.text.drop_path_rate: expected a rate "
                     r"in \[0, 1\), got 1.0"):
    make_model(text=dict(variant="nano", max_len=8, drop_path_rate=1.0))
  with pytest.raises(ConfigError, match="config.model.fusion: kind 'concat' takes no field "
                     "'drop_path_rate'"):
    make_model(fusion=dict(FUSION, drop_path_rate=0.1))


# --- per-tower dropout ----------------------------------------------------------------


def test_tower_dropout_overrides_the_global_rate_for_that_tower_only():
  _, outputs = fused_features()
  # What moves in training: the tower's own tokens, and fusion's output (from that tower's
  # tokens, or from its own dropout while the towers stay put).
  changed = {name: {part: not jnp.array_equal(outputs[name, True][part],
                                              outputs["base", False][part])
                    for part in ("image", "text", "fusion")}
             for name in ("image", "fusion", "not_text")}
  assert changed["image"] == {"image": True, "text": False, "fusion": True}
  assert changed["fusion"] == {"image": False, "text": False, "fusion": True}
  assert changed["not_text"] == {"image": True, "text": False, "fusion": True}
  with pytest.raises(ConfigError, match=r"config.model.image.dropout_rate: expected a rate"):
    make_model(image=dict(variant="nano/4", dropout_rate=-0.1))
  # None (the grading config's default) is the global rate.
  model = make_model(dropout_rate=0.2, image=dict(variant="nano/4", dropout_rate=None))
  assert model.towers["image"].dropout_rate == 0.2


# --- label smoothing ------------------------------------------------------------------


def test_label_smoothing_matches_a_hand_computed_cross_entropy():
  logits = np.array([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
  labels = np.array([0, 2])
  alpha = 0.3
  log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
  # Smoothed targets: 1 - alpha + alpha / 3 on the label, alpha / 3 elsewhere.
  targets = np.full((2, 3), alpha / 3)
  targets[[0, 1], labels] += 1 - alpha
  expected = -(targets * log_p).sum(axis=1)
  task = ClassificationTask({"label": 3}, {"label": 1.0}, label_smoothing=alpha)
  batch = {"label": jnp.asarray(labels), "example_mask": jnp.array([True, True])}
  loss, _ = task.loss({"label": jnp.asarray(logits)}, batch)
  assert float(loss) == pytest.approx(expected.mean(), rel=1e-6)
  # A padding example does not count.
  loss, _ = task.loss({"label": jnp.asarray(logits)},
                      dict(batch, example_mask=jnp.array([True, False])))
  assert float(loss) == pytest.approx(expected[0], rel=1e-6)


# --- adversarial training -------------------------------------------------------------


def test_adversarial_config():
  def config(**adversarial):
    return ml_collections.ConfigDict(dict(model=dict(modalities="image,text"),
                                          adversarial=adversarial))

  assert adversarial_lib.from_config(ml_collections.ConfigDict()) is None
  assert adversarial_lib.from_config(config(kind="", eps=1.0)) is None  # off
  adv = adversarial_lib.from_config(config(kind="pgd", eps=0.5, steps=4,
                                           modalities="image,text"))
  assert adv.modalities == ("image", "text") and adv.alpha == pytest.approx(2.5 * 0.5 / 4)
  for bad, message in [
      (dict(kind="fgsm", eps=1.0), "config.adversarial.kind: unknown attack 'fgsm'"),
      (dict(kind="fgm"), "config.adversarial.eps: required"),
      (dict(kind="fgm", eps=0.0), "config.adversarial.eps: expected a positive number"),
      (dict(kind="fgm", eps=1.0, norm="l1"), "config.adversarial.norm: unknown norm 'l1'"),
      (dict(kind="pgd", eps=1.0, steps=0), "config.adversarial.steps: expected a positive"),
      (dict(kind="fgm", eps=1.0, epsilon=1.0), "config.adversarial: unknown field.*epsilon"),
      (dict(kind="fgm", eps=1.0, modalities=("audio",)),
       "config.adversarial.modalities: audio is not among the run's modalities image,text"),
  ]:
    with pytest.raises(ConfigError, match=message):
      adversarial_lib.from_config(config(**bad))


@pytest.fixture(scope="module")
def trained():
  """A text-only classifier after 20 steps of FGM adversarial training (the train step
  with `adversarial` set), and the step's metrics along the way."""
  model = make_model("text", head_input="text", fusion=dict(FUSION, depth=0))
  task = ClassificationTask({"label": 2}, {"label": 1.0})
  batch = make_batch(32, seed=1)
  params = jax.jit(lambda: model.init(RNG, batch, train=False)["params"])()
  tx = optax.adam(3e-3)
  adv = Adversarial("fgm", eps=0.1, weight=1.0)
  step = jax.jit(make_train_step(model, task, tx, optax.constant_schedule(3e-3),
                                 jax.random.key(5), adversarial=adv))
  state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
  history = []
  for _ in range(20):
    state, metrics = step(state, batch)
    history.append(jax.device_get(metrics))
  return model, task, batch, state.params, history


def test_adversarial_train_step_reports_its_losses_and_trains(trained):
  *_, history = trained
  first, last = history[0], history[-1]
  for metrics in (first, last):
    assert float(metrics["loss"]) == pytest.approx(
        float(metrics["clean_loss"]) + float(metrics["adv_loss"]), rel=1e-5)
    assert "adv_accuracy" in metrics
  # The zero-initialised head makes the first loss log 2 and its gradient with respect to
  # the embeddings zero: no perturbation. Once it reads the text, the attack costs something.
  assert float(first["adv_delta_norm"]) == 0.0
  assert float(last["adv_delta_norm"]) == pytest.approx(0.1, rel=1e-4)  # FGM, l2: eps
  assert float(last["adv_loss"]) > float(last["clean_loss"])
  assert float(last["loss"]) < 0.7 * float(first["loss"])


def attacked_losses(trained, advs):
  """Clean loss (evaluation mode) and, per Adversarial, the perturbation and its loss."""
  model, task, batch, params, _ = trained

  def loss_of(delta):
    variables = {"params": params} if delta is None else {"params": params,
                                                          PERTURBATIONS: delta}
    return task.loss(model.apply(variables, batch, train=False), batch)[0]

  apply = lambda variables, **kw: model.apply(variables, batch, train=False, **kw)  # noqa
  zeros = adversarial_lib.zero_perturbations(apply, {"params": params}, ("text",))
  assert jax.tree.map(jnp.shape, zeros) == {"text_encoder": {"embeddings": (32, 8, 32)}}

  @jax.jit
  def run():
    deltas = [attack(loss_of, zeros, adv, jax.random.key(2)) for adv in advs]
    return loss_of(None), [(d["text_encoder"]["embeddings"], loss_of(d)) for d in deltas]

  clean, results = run()
  return float(clean), [(delta, float(loss)) for delta, loss in results]


def test_fgm_and_pgd_stay_in_the_eps_ball_and_raise_the_loss(trained):
  eps = 0.5
  advs = [Adversarial("fgm", eps), Adversarial("pgd", eps, steps=4),
          Adversarial("fgm", 0.02, norm="linf"),
          Adversarial("pgd", 0.02, steps=4, norm="linf", random_start=True)]
  clean, [(fgm, fgm_loss), (pgd, pgd_loss), (fgm_inf, fgm_inf_loss),
          (pgd_inf, pgd_inf_loss)] = attacked_losses(trained, advs)
  # Every example has a loss gradient, so FGM's L2 perturbation lies on the sphere.
  np.testing.assert_allclose(per_example_norm(fgm, "l2"), eps, rtol=1e-5)
  assert float(per_example_norm(pgd, "l2").max()) <= eps + 1e-6
  np.testing.assert_allclose(per_example_norm(fgm_inf, "linf"), 0.02, rtol=1e-6)
  assert float(per_example_norm(pgd_inf, "linf").max()) <= 0.02 + 1e-6
  # Same shape as the embeddings; padded text positions (no gradient) are not perturbed.
  mask = np.asarray(trained[2]["text_mask"])
  assert fgm.shape == (32, 8, 32) and float(jnp.abs(fgm[~mask]).max()) == 0.0
  # The attacks raise the loss, and PGD's iterates at least as much as FGM's one step.
  assert fgm_loss > clean + 0.05 and fgm_inf_loss > clean
  assert pgd_loss >= fgm_loss - 1e-6 and pgd_inf_loss > clean


class TinyTower(nn.Module):
  """Token ids [B, T] -> embeddings [B, T, 4] with a perturbation point, like TextEncoder."""

  @nn.compact
  def __call__(self, ids):
    return perturbation_point(self, nn.Embed(10, 4)(ids))


class TinyClassifier(nn.Module):
  @nn.compact
  def __call__(self, batch, *, train):
    tokens = TinyTower(name="text_encoder")(batch["text_ids"])
    hidden = nn.Dropout(0.3)(jnp.tanh(nn.Dense(8)(tokens)), deterministic=not train)
    return {"label": nn.Dense(2)(hidden.mean(axis=1))}


def test_adversarial_loss_differentiates_only_the_parameters():
  model, task = TinyClassifier(), ClassificationTask({"label": 2}, {"label": 1.0})
  batch = {"text_ids": jnp.arange(24).reshape(4, 6) % 10, "label": jnp.array([0, 1, 1, 0]),
           "example_mask": jnp.ones(4, bool)}
  adv = Adversarial("pgd", 0.3, steps=2, weight=0.5)
  rngs = {"dropout": jax.random.key(4)}
  apply = lambda variables, **kw: model.apply(  # noqa: E731
      variables, batch, train=True, rngs=rngs, **kw)
  loss_of = lambda variables: task.loss(apply(variables), batch)  # noqa: E731

  @jax.jit
  def run(params):
    zeros = adversarial_lib.zero_perturbations(apply, {"params": params}, ("text",))
    total = lambda p: adversarial_lib.adversarial_loss(  # noqa: E731
        loss_of, {"params": p}, zeros, adv, jax.random.key(6))[0]
    delta = attack(lambda d: loss_of({"params": params, PERTURBATIONS: d})[0], zeros, adv,
                   jax.random.key(6))
    # The training gradient is that of clean + weight * loss at the perturbed point, with
    # the perturbation a constant: nothing flows through the attack.
    reference = lambda p: (loss_of({"params": p})[0] +  # noqa: E731
                           0.5 * loss_of({"params": p, PERTURBATIONS: delta})[0])
    return jax.grad(total)(params), jax.grad(reference)(params), delta

  params = jax.jit(lambda: model.init(RNG, batch, train=False)["params"])()
  grads, reference, delta = run(params)
  assert float(jnp.abs(delta["text_encoder"]["embeddings"]).max()) > 0  # it did perturb
  assert jax.tree.all(jax.tree.map(
      lambda a, b: bool(jnp.allclose(a, b, rtol=1e-5, atol=1e-7)), grads, reference))


def test_adversarial_modalities_must_have_a_perturbation_point():
  model = make_model("image,text")
  batch = make_batch(2)
  variables = jax.eval_shape(lambda: model.init(RNG, batch, train=False))  # shapes only
  assert PERTURBATIONS not in variables  # init creates none
  apply = lambda variables, **kw: model.apply(variables, batch, train=False, **kw)  # noqa
  params = {"params": variables["params"]}
  zeros = adversarial_lib.zero_perturbations(apply, params, ("image", "text"))
  # Image patch embeddings: 4 patches of 4x4, before [CLS].
  assert jax.tree.map(jnp.shape, zeros) == {"image_encoder": {"embeddings": (2, 4, 32)},
                                            "text_encoder": {"embeddings": (2, 8, 32)}}
  with pytest.raises(ConfigError, match="config.adversarial.modalities: this model has no "
                     "embeddings to perturb for audio; it has: image, text"):
    adversarial_lib.zero_perturbations(apply, params, ("audio",))
