"""Fine-tuning modes from regex rules: what is frozen stays bit-identical, what trains moves,
no optimizer state for frozen parameters, LoRA merges exactly, adapters start as identity,
learning-rate multipliers, parameter counts in the log, exact resume in lora mode."""

import functools
import logging
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import traverse_util
from test_train import assert_trees_close, final_params, runlocal, train_losses

from mmjax.config import ConfigError
from mmjax.models import lora
from mmjax.models.model import build_model, head_specs
from mmjax.tasks import build_task
from mmjax.train import loop, param_rules
from mmjax.train import sharding as sharding_lib
from mmjax.train.optimizer import build_optimizer
from mmjax.train.step import jit_train_step, make_train_step

from conftest import load_config

NUM_CLASSES = {"label": 2, "written_digit": 10, "answer": 10}
VOCAB = 40
STEPS = 4


def config_for(mode, **overrides):
  return load_config("configs/edu/grading.py", "runlocal",
                     **{"finetune.mode": mode, "input.max_text_len": 12, **overrides})


def random_batch(size, seed, max_len=12):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(3, max_len + 1, size)
  mask = np.arange(max_len)[None] < lengths[:, None]
  return {"image": rng.uniform(-1, 1, (size, 8, 8, 1)).astype(np.float32),
          "text_ids": np.where(mask, rng.integers(5, VOCAB, (size, max_len)), 0).astype(np.int32),
          "text_mask": mask,
          "label": rng.integers(0, 2, size).astype(np.int32),
          "written_digit": rng.integers(0, 10, size).astype(np.int32),
          "answer": rng.integers(0, 10, size).astype(np.int32),
          "example_mask": np.ones(size, bool)}


class RandomDataExperiment(loop.Experiment):
  """The runlocal experiment's model and task on random batches (no dataset)."""

  def example_batch(self):
    return random_batch(1, seed=0)


def experiment(config):
  finetune = param_rules.Finetune.from_config(config)
  modalities = ("image", "text")
  model = build_model(config.model, modalities=modalities, vocab_size=VOCAB,
                      heads=head_specs(config.model, modalities, NUM_CLASSES.get),
                      adapter_dim=finetune.model_adapter_dim)
  mesh = sharding_lib.make_mesh((("data", -1),), jax.devices()[:1])
  return RandomDataExperiment(config, None, None, model, build_task(config, NUM_CLASSES.get),
                              mesh, finetune)


def flat(tree):
  return {"/".join(path): np.asarray(leaf)
          for path, leaf in traverse_util.flatten_dict(tree).items()}


def unflat(flat_tree):
  return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat_tree.items()})


def same_bits(a, b):
  return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


CASES = {  # name -> (mode, config overrides); the last adds user rules and lr multipliers
    "frozen_image": ("frozen_image", {}),
    "frozen_text": ("frozen_text", {}),
    "lora": ("lora", {}),
    "adapters": ("adapters", {}),
    "frozen_towers_rules_lr_mults": ("frozen_towers", {
        "finetune.rules": (("text_encoder/token_embedding/.*", "train"),
                           ("heads/written_digit/.*", "freeze")),
        "optimizer.lr_mults": (("heads/answer/.*", 0.0), ("fusion/.*", 2.0))}),
}


def expected_trainable(case, path):
  """Which parameters should train, written with plain string tests (not the rules)."""
  tower = path.startswith(("image_encoder/", "text_encoder/"))
  module, leaf = path.rsplit("/", 1)
  if case == "frozen_image":
    return not path.startswith("image_encoder/")
  if case == "frozen_text":
    return not path.startswith("text_encoder/")
  if case == "frozen_towers":
    return not tower
  if case == "lora":
    if leaf in ("lora_a", "lora_b"):
      assert tower and module.endswith(("/query", "/value")), path
      return True
    return not tower
  if case == "adapters":
    return (not tower or "/adapter_" in path
            or (module.split("/")[-1].startswith("norm") and leaf in ("scale", "bias")))
  if case == "frozen_towers_rules_lr_mults":
    return ((not tower or path.startswith("text_encoder/token_embedding/"))
            and not path.startswith(("heads/written_digit/", "heads/answer/")))
  raise AssertionError(case)


@functools.cache
def base_params(adapters):
  """Random initial parameters of the runlocal model (with or without adapters), once."""
  exp = experiment(config_for("adapters" if adapters else "full"))
  return loop.random_params(exp)


@functools.cache
def trained(case):
  """(initial params, final state, setup, exp) after STEPS real train steps."""
  mode, overrides = CASES[case]
  exp = experiment(config_for(mode, **overrides))
  params = jax.tree.map(jnp.copy, base_params(mode == "adapters"))  # the state is donated
  state, setup = loop.create_state(exp, loop.add_finetune_params(exp, params))
  initial = flat(state.params)
  step = jit_train_step(
      make_train_step(exp.model, exp.task, setup.tx, setup.schedule, jax.random.key(1),
                      trainable=setup.trainable, model_params=setup.model_params),
      setup.shardings, exp.batch_sharding, exp.replicated)
  for i in range(STEPS):
    state, metrics = step(state, exp.to_device(random_batch(8, seed=i + 1)))
    assert np.isfinite(float(metrics["loss"]))
  return initial, state, setup, exp


@pytest.mark.parametrize("mode", param_rules.FINETUNE_MODES)
def test_mode_labels(mode):
  """Every mode's rules on the parameter shapes (no compilation)."""
  exp = experiment(config_for(mode))
  shapes = jax.eval_shape(lambda: loop.random_params(exp))
  labels = flat(exp.finetune.labels(shapes))
  for path, label in labels.items():
    tower = path.startswith(("image_encoder/", "text_encoder/"))
    if mode == "full" or not tower:
      expected = param_rules.TRAIN
    elif mode == "frozen_image":
      expected = param_rules.FREEZE if path.startswith("image_encoder/") else param_rules.TRAIN
    elif mode == "frozen_text":
      expected = param_rules.FREEZE if path.startswith("text_encoder/") else param_rules.TRAIN
    elif mode == "lora" and re.search(r"/(query|value)/kernel$", path):
      expected = param_rules.LORA
    else:
      expected = param_rules.TRAIN if expected_trainable(mode, path) else param_rules.FREEZE
    assert label == expected, path


@pytest.mark.parametrize("case", list(CASES))
def test_frozen_parameters_are_bit_identical_and_the_rest_train(case):
  initial, state, setup, _ = trained(case)
  final = flat(state.params)
  assert set(final) == set(initial)
  mask = {k: bool(v) for k, v in flat(setup.trainable).items()}
  for path in final:
    assert mask[path] == expected_trainable(case, path), path
    if mask[path]:
      assert not np.array_equal(final[path], initial[path]), f"{path} did not train"
    else:
      assert same_bits(final[path], initial[path]), f"{path} changed"
  assert 0 < sum(mask.values()) < len(mask)
  if case == "lora":  # 2 (query, value) per block: 1 image + 2 text blocks (nano towers)
    assert lora.count_lora(state.params) == sum(
        bool(re.fullmatch(r"(image|text)_encoder/.*/(query|value)/kernel", p)) for p in final)
    assert lora.count_lora(state.params) > 0
  if case == "adapters":
    assert any("/adapter_mlp/" in p for p in final)


def adam_states(opt_state):
  is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)  # noqa: E731
  return [s for s in jax.tree.leaves(opt_state, is_leaf=is_adam) if is_adam(s)]


@pytest.mark.parametrize("case", ["lora", "adapters", "frozen_towers_rules_lr_mults"])
def test_no_optimizer_state_for_frozen_parameters(case):
  _, state, setup, _ = trained(case)
  num_trainable = sum(v.size for k, v in flat(state.params).items()
                      if flat(setup.trainable)[k])
  assert setup.num_trainable == num_trainable
  assert setup.num_total == sum(v.size for v in flat(state.params).values())
  (adam,) = adam_states(state.opt_state)
  moments = sum(x.size for x in jax.tree.leaves((adam.mu, adam.nu)))
  assert moments == 2 * num_trainable
  # Nothing else in the optimizer state is parameter-sized: only step counters remain.
  others = sum(x.size for x in jax.tree.leaves(state.opt_state)) - moments
  assert others <= 2


def unmerged_outputs(model, params, batch, alpha):
  """The model with LoRA computed beside each kernel: x @ W + b + (alpha/r) x @ A @ B."""
  flat_params = flat(params)

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if not isinstance(module, nn.Dense) or context.method_name != "__call__":
      return out
    prefix = "/".join(module.scope.path)
    if f"{prefix}/lora_a" not in flat_params:
      return out
    lora_a, lora_b = flat_params[f"{prefix}/lora_a"], flat_params[f"{prefix}/lora_b"]
    return out + (alpha / lora_a.shape[1]) * (args[0] @ lora_a) @ lora_b

  base = unflat({k: v for k, v in flat_params.items() if not k.endswith(("lora_a", "lora_b"))})

  @jax.jit
  def apply(base, batch):
    with nn.intercept_methods(interceptor):
      return model.apply({"params": base}, batch, train=False)

  return apply(base, batch)


def test_lora_merged_equals_unmerged_after_training():
  _, state, _, exp = trained("lora")
  params = jax.device_get(state.params)
  lora_b = [v for k, v in flat(params).items() if k.endswith("lora_b")]
  assert lora_b and all(np.abs(b).max() > 0 for b in lora_b)  # training moved them
  batch = {k: jnp.asarray(v) for k, v in random_batch(4, seed=99).items()}
  alpha = exp.finetune.lora_alpha
  merged = jax.jit(functools.partial(exp.model.apply, train=False))(
      {"params": lora.merge_lora(params, alpha)}, batch)
  unmerged = unmerged_outputs(exp.model, params, batch, alpha)
  base = jax.jit(functools.partial(exp.model.apply, train=False))(
      {"params": lora.merge_lora(params, 0.0)}, batch)
  for head in merged:
    diff = np.abs(np.asarray(merged[head]) - np.asarray(unmerged[head])).max()
    assert diff <= 1e-5, (head, diff)
    # ... and the factors matter: without them the outputs differ.
    assert np.abs(np.asarray(merged[head]) - np.asarray(base[head])).max() > 1e-4
  # Merging gives the model's own tree: same paths, shapes and dtypes, no factors.
  assert (jax.tree.map(lambda x: (x.shape, x.dtype), lora.merge_lora(params, alpha))
          == jax.tree.map(lambda x: (x.shape, x.dtype), base_params(False)))


@pytest.mark.parametrize("targets, message", [
    (r"image_encoder/.*/qeury/kernel", "matches no parameter"),
    (r"image_encoder/patch_embedding/kernel", r"shape \(2, 2, 1, 32\); LoRA needs 2-D"),
    (r"text_encoder/.*/query/bias", "LoRA needs 2-D"),
])
def test_bad_lora_targets_are_config_errors(targets, message):
  exp = experiment(config_for("lora", **{"finetune.lora.targets": targets}))
  with pytest.raises(ConfigError, match=r"config\.finetune\.lora\.targets.*" + message):
    loop.create_state(exp)


@pytest.mark.parametrize("overrides, message", [
    ({"finetune.mode": "prefix"}, r"config\.finetune\.mode: unknown mode 'prefix'"),
    ({"finetune.rules": (("heads/.*", "thaw"),)}, r"config\.finetune\.rules: value 'thaw'"),
    ({"finetune.rules": (("heads/(", "train"),)}, r"config\.finetune\.rules: bad regex"),
    ({"finetune.lora": {"rank": 0}}, r"config\.finetune\.lora\.rank must be a positive"),
    ({"finetune.adapters": {"dim": -1}}, r"config\.finetune\.adapters\.dim must be a positive"),
])
def test_bad_finetune_configs(overrides, message):
  with pytest.raises(ConfigError, match=message):
    param_rules.Finetune.from_config(config_for("full", **overrides))


def test_lr_mults_validation():
  with pytest.raises(ConfigError, match=r"config\.optimizer\.lr_mults: the multiplier"):
    param_rules.lr_multipliers({"a": jnp.zeros(2)}, (("a", -1.0),))


def test_everything_frozen_is_a_config_error():
  exp = experiment(config_for("frozen_towers", **{"finetune.rules": ((".*", "freeze"),)}))
  with pytest.raises(ConfigError, match="no parameter is trainable"):
    loop.create_state(exp, base_params(False))


def test_adapters_at_init_leave_outputs_unchanged():
  plain = experiment(config_for("full")).model
  adapted = experiment(config_for("adapters")).model
  base = flat(base_params(False))
  with_adapters = flat(base_params(True))  # random down projections, zero up projections
  adapter_paths = {p for p in with_adapters if "/adapter_" in p}
  assert adapter_paths and any("/adapter_cross/" in p for p in adapter_paths)
  assert set(with_adapters) - adapter_paths == set(base)
  assert all(np.abs(with_adapters[p]).max() > 0 for p in adapter_paths if p.endswith("down/kernel"))
  assert all(not with_adapters[p].any() for p in adapter_paths if "/up/" in p)
  # Same base parameters: the adapters are identities, whatever the down projections.
  params = unflat({**with_adapters, **base})
  batch = {k: jnp.asarray(v) for k, v in random_batch(4, seed=5).items()}
  expected = jax.jit(functools.partial(plain.apply, train=False))({"params": unflat(base)}, batch)
  got = jax.jit(functools.partial(adapted.apply, train=False))({"params": params}, batch)
  for head in expected:
    np.testing.assert_allclose(np.asarray(got[head]), np.asarray(expected[head]),
                               atol=1e-6, rtol=0)


def test_lr_multiplier_two_moves_twice_as_far_and_zero_is_frozen():
  config = ml_collections.ConfigDict(dict(
      total_steps=10, schedule=dict(warmup_steps=1, decay="constant", end_factor=0.0),
      optimizer=dict(learning_rate=0.1, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-2,
                     weight_decay_rules=(".*/kernel",), clip_norm=1.0,
                     lr_mults=(("fast/.*", 2.0), ("stuck/.*", 0.0)))))
  params = {name: {"kernel": jnp.array([[1.0, -2.0], [0.5, 3.0]])}
            for name in ("fast", "plain")}
  tx, _ = build_optimizer(config, params)
  grads = {name: {"kernel": jnp.array([[0.3, -0.1], [0.2, 0.05]])} for name in params}
  state = tx.init(params)
  for _ in range(2):  # step 0 has learning rate 0 (warmup); step 1 moves
    updates, state = tx.update(grads, state, params)
  fast, plain = np.asarray(updates["fast"]["kernel"]), np.asarray(updates["plain"]["kernel"])
  assert np.abs(plain).min() > 0
  np.testing.assert_array_equal(fast, 2 * plain)
  # Multiplier 0 means frozen: the parameter is not in the trainable set at all.
  with_stuck = dict(params, stuck={"kernel": jnp.ones((2, 2))})
  mults = param_rules.lr_multipliers(with_stuck, config.optimizer.lr_mults)
  labels = jax.tree.map(lambda _: param_rules.TRAIN, with_stuck)
  mask = param_rules.trainable_mask(labels, mults)
  assert mask == {"fast": {"kernel": True}, "plain": {"kernel": True},
                  "stuck": {"kernel": False}}


def test_lora_resume_matches_uninterrupted_and_logs_parameter_counts(data_dir, tmp_path,
                                                                   caplog):
  config = runlocal(data_dir, total_steps=20, **{
      "finetune.mode": "lora", "evals.splits": ("validation",),
      "evals.headline": "validation/accuracy", "checkpoint.every_steps": 20})
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  with caplog.at_level(logging.INFO, logger="mmjax.train.loop"):
    loop.train(config, straight)
  assert loop.train(config, resumed, stop_after_steps=5) == {}
  assert sorted(os.listdir(os.path.join(resumed, "checkpoints"))) == ["10"]
  loop.train(config, resumed)
  final = final_params(straight)
  assert_trees_close(final, final_params(resumed), atol=0)
  assert train_losses(straight) == train_losses(resumed)
  # The log line counts parameters: LoRA factors, fusion and heads train.
  paths = flat(final)
  total = sum(v.size for v in paths.values())
  trainable = sum(v.size for p, v in paths.items()
                  if p.endswith(("lora_a", "lora_b")) or p.startswith(("fusion/", "heads/")))
  assert f"parameters: {trainable:,} trainable / {total:,} total" in caplog.text
  assert any(p.endswith("lora_b") and np.abs(v).max() > 0 for p, v in paths.items())


def test_split_and_merge_params_round_trip_without_empty_subtrees():
  params = {"a": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)}, "b": {"x": jnp.ones(3)}}
  mask = {"a": {"kernel": True, "bias": False}, "b": {"x": False}}
  trainable, frozen = param_rules.split_params(params, mask)
  assert jax.tree.structure(trainable) == jax.tree.structure({"a": {"kernel": 0}})
  assert jax.tree.structure(frozen) == jax.tree.structure({"a": {"bias": 0}, "b": {"x": 0}})
  merged = param_rules.merge_params(trainable, frozen)
  assert jax.tree.structure(merged) == jax.tree.structure(params)
  assert all(x is y for x, y in zip(jax.tree.leaves(merged), jax.tree.leaves(params),
                                    strict=True))


def test_user_rules_that_match_nothing_are_logged(caplog):
  exp = experiment(config_for("full", **{"finetune.rules": (("image_encoder/nope/.*",
                                                              "freeze"),)}))
  with caplog.at_level(logging.WARNING, logger="mmjax.train.param_rules"):
    exp.finetune.warn_unmatched(base_params(False))
  assert "'image_encoder/nope/.*' matches no parameter" in caplog.text
