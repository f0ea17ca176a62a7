"""Mesh axes and parameter shardings: rules, defaults, optimizer state, batch rows.

That training on these meshes equals training on one device is tested end to end in
test_train.py (`test_eight_device_meshes_match_one_device`).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from test_train import assert_trees_close, final_params, train_losses

from mmjax.config import ConfigError
from mmjax.train import loop
from mmjax.train import sharding as sharding_lib

from conftest import load_config

CUBE = (("data", 2), ("fsdp", 2), ("tensor", 2))


def experiment(data_dir, mesh, **overrides):
  config = load_config("configs/edu/grading.py", "runlocal", mesh=mesh,
                       **{"data.data_dir": data_dir, **overrides})
  return loop.build_experiment(config, jax.devices())


def specs(shardings):
  return {path: s.spec for path, s in zip(
      jax.tree.leaves(sharding_lib.param_rules.param_paths(shardings)),
      jax.tree.leaves(shardings), strict=True)}


def test_default_rules_split_attention_and_mlp_megatron_style_and_the_rest_fsdp(data_dir):
  exp = experiment(data_dir, CUBE)
  state, setup = loop.create_state(exp)
  got = specs(setup.shardings.params)
  block = "fusion/cross_encoder/block_0"
  assert got[f"{block}/self_attention/query/kernel"] == P("fsdp", "tensor")
  assert got[f"{block}/self_attention/query/bias"] == P("tensor")
  assert got[f"{block}/cross_attention/out/kernel"] == P("tensor", "fsdp")
  assert got[f"{block}/mlp/fc1/kernel"] == P("fsdp", "tensor")
  assert got[f"{block}/mlp/fc2/kernel"] == P("tensor", "fsdp")
  # No rule: fsdp over the largest dimension the axis divides.
  embedding = state.params["text_encoder"]["token_embedding"]["embedding"]
  largest = int(np.argmax(embedding.shape))
  assert got["text_encoder/token_embedding/embedding"] == P(
      *("fsdp" if d == largest else None for d in range(2)))
  assert got[f"{block}/norm_mlp/scale"] == P("fsdp")
  # The arrays really are split: a device holds a quarter of a query kernel.
  kernel = state.params["fusion"]["cross_encoder"]["block_0"]["self_attention"]["query"]["kernel"]
  assert kernel.sharding.spec == P("fsdp", "tensor")
  rows, cols = kernel.shape
  assert {s.data.shape for s in kernel.addressable_shards} == {(rows // 2, cols // 2)}
  # Adam's moments are sharded like their parameters; its step count is replicated.
  opt_specs = [s.spec for s in jax.tree.leaves(setup.shardings.opt_state)]
  assert opt_specs.count(P("fsdp", "tensor")) >= 2 * sum(
      1 for s in got.values() if s == P("fsdp", "tensor"))
  counts = [leaf for leaf in jax.tree.leaves(state.opt_state) if leaf.ndim == 0]
  assert counts and all(leaf.sharding.spec == P() for leaf in counts)


def test_axes_absent_from_the_mesh_or_not_dividing_a_dimension_are_dropped(data_dir):
  exp = experiment(data_dir, (("data", 8),))
  _, setup = loop.create_state(exp)
  # Data parallel: the rules name only fsdp and tensor, so every parameter is replicated.
  assert all(all(entry is None for entry in spec)
             for spec in specs(setup.shardings.params).values())
  mesh = sharding_lib.make_mesh((("fsdp", 8),), jax.devices())
  odd = jax.ShapeDtypeStruct((6, 12), jnp.float32)
  no_rule = sharding_lib.NO_RULE
  assert sharding_lib.param_spec("a/b/kernel", odd.shape, no_rule, mesh) == P(None, None)
  assert sharding_lib.param_spec("a/b/kernel", (6, 16), no_rule, mesh) == P(None, "fsdp")
  assert sharding_lib.param_spec("a/b/kernel", (6, 16), None, mesh) == P(None, None)
  rule = (".*/query/kernel", ("fsdp", "tensor"))
  assert sharding_lib.param_spec("a/query/kernel", (16, 6), rule, mesh) == P(
      "fsdp", None)


def test_user_rules_come_before_the_defaults(data_dir):
  exp = experiment(data_dir, CUBE, sharding_rules=(
      (r"fusion/.*/query/kernel", (None, ("fsdp", "tensor"))),
      (r"image_encoder/.*", None)))
  _, setup = loop.create_state(exp)
  got = specs(setup.shardings.params)
  assert got["fusion/cross_encoder/block_0/self_attention/query/kernel"] == P(
      None, ("fsdp", "tensor"))
  assert all(spec == P(*[None] * len(spec)) for path, spec in got.items()
             if path.startswith("image_encoder/"))


@pytest.mark.parametrize("rules, message", [
    (((r".*/query/kernel", ("fsdp",)),), r"expected one entry .* per dimension of its 2-d"),
    (((r".*/query/kernel", ("fsdp", "model")),), r"names axis 'model', expected one of"),
    (((r"(", None),), r"config.sharding_rules: bad regex"),
    (((r".*/query/kernel", ("fsdp", "fsdp")),), r"'.\*/query/kernel' .* uses an axis twice"),
])
def test_bad_sharding_rules_name_the_field(data_dir, rules, message):
  exp = experiment(data_dir, CUBE, sharding_rules=rules)
  with pytest.raises(ConfigError, match=message):
    loop.create_state(exp)


@pytest.mark.parametrize("mesh, message", [
    ((("data", 2), ("model", 4)), r"expected distinct axes among data, fsdp, tensor"),
    ((("data", -1), ("fsdp", -1)), r"at most one may be -1"),
    ((("data", 3),), r"needs 3 devices, 8 are available"),
    (("data",), r"expected \(axis, size\) pairs"),
])
def test_bad_meshes_fail_with_one_line(mesh, message):
  with pytest.raises(ConfigError, match=message):
    sharding_lib.make_mesh(mesh, jax.devices())


def test_the_batch_is_split_over_data_and_fsdp_but_not_tensor():
  mesh = sharding_lib.make_mesh(CUBE, jax.devices())
  sharding = sharding_lib.batch_sharding(mesh)
  assert sharding.spec == P(("data", "fsdp"))
  assert sharding_lib.batch_parts(mesh) == 4
  assert sharding_lib.process_rows(sharding, 16) == (0, 16)  # one process holds every row
  batch = sharding_lib.global_batch({"x": np.arange(16.0)}, sharding)["x"]
  assert batch.shape == (16,)
  for shard in batch.addressable_shards:  # 4 row blocks, each on the 2 devices of a tensor pair
    assert shard.data.shape == (4,)
    np.testing.assert_array_equal(shard.data, np.arange(16.0)[shard.index])


def test_activations_are_pinned_to_the_batch_axes_inside_the_steps():
  from mmjax.models.layers import constrain_batch
  from mmjax.train.step import tracing_mesh

  mesh = sharding_lib.make_mesh(CUBE, jax.devices())
  x = jnp.ones((8, 3, 4))
  assert constrain_batch(x) is x  # no mesh: untouched

  def f(x):
    with tracing_mesh(mesh):
      return constrain_batch(x * 2)

  text = jax.jit(f).lower(x).as_text()
  assert "sharding_constraint" in text or "Sharding" in text
  np.testing.assert_array_equal(jax.jit(f)(x), 2 * x)


def test_scanned_layers_train_sharded_with_the_layer_axis_whole(data_dir, tmp_path):
  config = load_config("configs/edu/grading.py", "runlocal", mesh=CUBE, total_steps=20,
                       log_every_steps=10, **{
                           "data.data_dir": data_dir, "model.block": {"scan": True},
                           "checkpoint.every_steps": 20, "evals.splits": ("validation",),
                           "evals.headline": "validation/accuracy"})
  exp = loop.build_experiment(config, jax.devices())
  _, setup = loop.create_state(exp)
  got = specs(setup.shardings.params)
  assert got["fusion/cross_encoder/scanned_blocks/block/self_attention/query/kernel"] == P(
      None, "fsdp", "tensor")
  assert got["fusion/cross_encoder/scanned_blocks/block/mlp/fc2/kernel"] == P(
      None, "tensor", "fsdp")
  results = loop.train(config, str(tmp_path / "run"))
  losses = [loss for _, loss in train_losses(str(tmp_path / "run"))]
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
  assert 0 <= results["validation"]["accuracy"] <= 1


def test_scan_refuses_lora(data_dir):
  with pytest.raises(ConfigError, match=r"config.model.block.scan: stacked layers cannot"):
    experiment(data_dir, CUBE, **{"model.block": {"scan": True}, "finetune.mode": "lora"})


def test_a_run_checkpointed_on_one_mesh_resumes_on_another(data_dir, tmp_path):
  overrides = {"data.data_dir": data_dir, "total_steps": 10, "log_every_steps": 5,
               "checkpoint.every_steps": 5, "schedule.warmup_steps": 2,
               "evals.splits": ("validation",), "evals.headline": "validation/accuracy"}
  on = lambda mesh: load_config("configs/edu/grading.py", "runlocal", mesh=mesh,  # noqa: E731
                                **overrides)
  straight, moved = str(tmp_path / "straight"), str(tmp_path / "moved")
  loop.train(on((("data", 8),)), straight)
  assert loop.train(on((("fsdp", 4), ("tensor", 2))), moved, stop_after_steps=5) == {}
  loop.train(on((("data", 8),)), moved)  # restores the fsdp x tensor shards onto data=8
  np.testing.assert_allclose([loss for _, loss in train_losses(moved)],
                             [loss for _, loss in train_losses(straight)], atol=1e-5, rtol=0)
  # Steps 1-5 ran on fsdp x tensor, whose reductions sum in another order than data=8's,
  # and Adam turns that rounding into per-parameter noise: up to 1.03e-5 after 10 steps on
  # a fresh install of this stack (2026-11-25; the same with the previous commit's code).
  assert_trees_close(final_params(straight), final_params(moved), atol=3e-5)


def test_lora_factors_are_split_like_their_kernels():
  mesh = sharding_lib.make_mesh(CUBE, jax.devices())
  params = {"tower": {"attn": {"query": {"kernel": jnp.zeros((16, 32)),
                                         "lora_a": jnp.zeros((16, 4)),
                                         "lora_b": jnp.zeros((4, 32))},
                               "out": {"kernel": jnp.zeros((32, 16)),
                                       "lora_a": jnp.zeros((32, 4)),
                                       "lora_b": jnp.zeros((4, 16))}}}}
  got = specs(sharding_lib.param_shardings(params, mesh))
  assert got["tower/attn/query/lora_a"] == P("fsdp", None)
  assert got["tower/attn/query/lora_b"] == P(None, "tensor")
  assert got["tower/attn/out/lora_a"] == P("tensor", None)
  assert got["tower/attn/out/lora_b"] == P(None, "fsdp")


def test_device_peaks_match_whole_device_names():
  from mmjax.train.profile import peak_flops

  assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
  assert peak_flops("NVIDIA H100 PCIe") == 756e12
  assert peak_flops("NVIDIA L40S") is None  # not an L4
  assert peak_flops("TPU v5 lite") == 197e12
  assert peak_flops("TPU v5") == 459e12  # v5p reports itself as "TPU v5"
  assert peak_flops("cpu") is None
  assert peak_flops("cpu", 1e12) == 1e12
