"""Fusion kinds, head pooling, the modality-generic model (mmjax/models/{fusion,heads,model})."""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmjax.config import ConfigError
from mmjax.models.fusion import FUSIONS, Fused, build_fusion
from mmjax.models.heads import ClassificationHead, Heads, HeadSpec, MapPooling, VoteHead, pool
from mmjax.models.layers import Tokens
from mmjax.models.model import MultimodalModel, build_model, head_specs

RNG = jax.random.key(0)
KINDS = tuple(FUSIONS)
ATTENTION_KINDS = ("merged", "co_attention", "cross_attention")
BATCH = 2
# Tower outputs of different widths and lengths; text is padded after its real tokens.
SHAPES = {"image": (5, 24), "text": (6, 32), "audio": (4, 16)}
TEXT_LENGTHS = np.array([6, 3])


def make_streams(modalities, seed=0) -> dict[str, Tokens]:
  rng = np.random.default_rng(seed)
  streams = {}
  for name in modalities:
    length, width = SHAPES[name]
    tokens = jnp.asarray(rng.normal(size=(BATCH, length, width)), jnp.float32)
    mask = np.ones((BATCH, length), bool)
    if name == "text":
      mask = np.arange(length)[None] < TEXT_LENGTHS[:, None]
    streams[name] = Tokens(tokens, jnp.asarray(mask))
  return streams


def fusion_of(kind, depth=1, **kw):
  return build_fusion(kind, width=16, depth=depth, num_heads=2, mlp_dim=32, **kw)


class FusionWithHeads(nn.Module):
  """Streams -> (Fused, {head: logits}): the model without towers."""

  fusion: nn.Module
  heads: Heads

  @nn.compact
  def __call__(self, streams):
    fused = self.fusion(streams, train=False)
    return fused, self.heads(streams, fused)


FUSED_HEADS = (HeadSpec("by_cls", "fused", 3, "cls"), HeadSpec("by_mean", "fused", 3, "mean"),
               HeadSpec("by_map", "fused", 3, "map", num_heads=2))


def random_params(module, *args, seed=0):
  """Random variables for `module.init(RNG, *args)`, drawn with numpy: LayerNorm scales near
  1, kernels with variance 1 / fan_in (so the zero-initialised heads give non-trivial
  logits), everything else small. Avoids compiling `init` (slow on a loaded CPU)."""
  shapes = jax.eval_shape(module.init, RNG, *args)
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == "scale":
      value = 1.0 + 0.1 * rng.normal(size=leaf.shape)
    elif name == "kernel":
      value = rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
    else:  # biases, embeddings, [CLS], type embeddings, MAP probe, votes
      value = 0.1 * rng.normal(size=leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def compiled(fn, *args):
  """jax.jit(fn) compiled for these arguments with light backend optimisation (fast to build)."""
  return jax.jit(fn).lower(*args).compile({"xla_backend_optimization_level": 0})


def expected_fused_length(kind, modalities):
  lengths = {name: SHAPES[name][0] for name in modalities}
  if kind == "concat":
    return 1
  if kind in ("merged", "co_attention"):
    return 1 + sum(lengths.values())
  if kind == "cross_attention":  # the query stream: text if present
    return lengths["text"] if "text" in lengths else lengths[sorted(lengths)[0]]
  return None


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_for_every_subset_of_modalities(kind):
  for modalities in (("image", "text"), ("image",), ("text",), ("audio", "image", "text")):
    streams = make_streams(modalities)
    specs = FUSED_HEADS + ((HeadSpec("image_head", "image", 4, "mean"),)
                           if "image" in modalities else ())
    probe = FusionWithHeads(fusion_of(kind), Heads(specs))
    (fused, logits), _ = jax.eval_shape(probe.init_with_output, RNG, streams)
    assert set(fused.streams) == set(modalities)
    for name in modalities:
      assert fused.streams[name].tokens.shape == (BATCH, SHAPES[name][0], 16), (kind, name)
      assert fused.streams[name].mask.shape == (BATCH, SHAPES[name][0])
    length = expected_fused_length(kind, modalities)
    if kind == "late":
      assert fused.tokens is None
    else:
      assert fused.tokens.tokens.shape == (BATCH, length, 16), (kind, modalities)
      assert fused.tokens.mask.shape == (BATCH, length)
    assert set(logits) == {spec.name for spec in specs}
    for spec in specs:
      assert logits[spec.name].shape == (BATCH, spec.num_classes)
      assert logits[spec.name].dtype == jnp.float32


def count_blocks(params) -> int:
  """Number of parameter subtrees named block_<i>, at any level."""
  paths = {"/".join(str(k.key) for k in path) for path, _ in
           jax.tree_util.tree_flatten_with_path(params)[0]}
  blocks = {m.group(0) for p in paths for m in [re.match(r"(.*?/)?block_\d+", p)] if m}
  return len(blocks)


@pytest.mark.parametrize("kind", KINDS)
def test_depth_is_the_number_of_fusion_layers(kind):
  streams = make_streams(("image", "text"))
  per_depth = 2 if kind == "late" else 1  # late: one stack per modality
  depths = (0, 1, 3) if kind in ("concat", "late") else (1, 3)
  for depth in depths:
    probe = FusionWithHeads(fusion_of(kind, depth), Heads(FUSED_HEADS))
    shapes = jax.eval_shape(probe.init, RNG, streams)["params"]["fusion"]
    assert count_blocks(shapes) == per_depth * depth, (kind, depth)
  if kind not in ("concat", "late"):
    with pytest.raises(ConfigError, match="config.model.fusion.depth: expected an integer >= 1"):
      fusion_of(kind, 0)


@pytest.mark.parametrize("kind", KINDS)
def test_padded_text_tokens_do_not_change_logits(kind):
  streams = make_streams(("image", "text"))
  probe = FusionWithHeads(fusion_of(kind), Heads(FUSED_HEADS))
  params = random_params(probe, streams)
  apply = compiled(probe.apply, params, streams)
  _, logits = apply(params, streams)
  text = streams["text"]
  padded = ~np.asarray(text.mask)
  assert padded.any()
  noise = jax.random.normal(jax.random.key(3), text.tokens.shape) * 10
  noisy_text = Tokens(jnp.where(padded[..., None], noise, text.tokens), text.mask)
  _, noisy = apply(params, dict(streams, text=noisy_text))
  changed_text = Tokens(text.tokens.at[1, 1].add(1.0), text.mask)  # a real token of row 1
  _, changed = apply(params, dict(streams, text=changed_text))
  for name in logits:
    assert np.abs(logits[name]).max() > 1e-3  # the heads are not trivial
    np.testing.assert_allclose(noisy[name], logits[name], atol=1e-5, err_msg=name)
    assert not np.allclose(changed[name][1], logits[name][1], atol=1e-5), name


# ---- the model with real towers ----

def model_config(kind, dtype="float32", **fusion):
  return ml_collections.ConfigDict(dict(
      modalities="image,text", dtype=dtype, param_dtype="float32", dropout_rate=0.0,
      image=dict(variant="nano/4"), text=dict(variant="nano", max_len=8),
      fusion=dict(kind=kind, depth=1, width=32, num_heads=2, mlp_dim=64, **fusion),
      heads=dict(label=dict(input="fused", pooling="cls"),
                 pooled=dict(input="fused", pooling="map", num_heads=2),
                 digit=dict(input="image", pooling="mean"))))


def make_model(kind, modalities=("image", "text"), **kw):
  config = model_config(kind, **kw)
  heads = head_specs(config, modalities, lambda name: {"digit": 10}.get(name, 3))
  return build_model(config, modalities=modalities, vocab_size=40, heads=heads)


def batch(seed=0):
  rng = np.random.default_rng(seed)
  mask = np.arange(8)[None] < np.array([8, 5, 3])[:, None]
  return {"image": jnp.asarray(rng.uniform(-1, 1, (3, 8, 8, 1)), jnp.float32),
          "text_ids": jnp.asarray(np.where(mask, rng.integers(5, 40, (3, 8)), 0), jnp.int32),
          "text_mask": jnp.asarray(mask)}


def real_text_tokens(seq: Tokens, text_mask) -> np.ndarray:
  return np.asarray(seq.tokens)[np.asarray(text_mask)]


@pytest.mark.parametrize("kind", ("late", *ATTENTION_KINDS))
def test_only_attention_kinds_see_the_other_modality(kind):
  """Late fusion's text outputs ignore the image; every attention kind's depend on it."""
  model = make_model(kind)
  data = batch()
  params = random_params(model, data)

  def features(inputs):
    _, fused = model.apply(params, inputs, method="features")
    logits, state = model.apply(params, inputs, mutable=["intermediates"])
    return fused, logits, state.get("intermediates", {})

  run = compiled(features, data)

  fused, logits, inter = run(data)
  # The other modality's input changes: pixels shuffled before the ViT / another question.
  pixels = np.random.default_rng(1).permutation(64)
  shuffled = data["image"].reshape(3, 64, 1)[:, pixels].reshape(3, 8, 8, 1)
  image_changed, image_logits, image_inter = run(dict(data, image=shuffled))
  other_text = dict(data, text_ids=jnp.where(data["text_mask"], (data["text_ids"] + 3) % 40, 0))
  text_changed, _, _ = run(other_text)

  text_before = real_text_tokens(fused.streams["text"], data["text_mask"])
  text_after = real_text_tokens(image_changed.streams["text"], data["text_mask"])
  image_before = np.asarray(fused.streams["image"].tokens)
  image_after = np.asarray(text_changed.streams["image"].tokens)
  assert not np.allclose(logits["label"], image_logits["label"], atol=1e-5)
  if kind == "late":
    np.testing.assert_allclose(text_after, text_before, atol=1e-6)
    np.testing.assert_allclose(image_after, image_before, atol=1e-6)
    votes = inter["heads"]["label"]
    np.testing.assert_allclose(image_inter["heads"]["label"]["text_logits"][0],
                               votes["text_logits"][0], atol=1e-6)
    assert not np.allclose(image_inter["heads"]["label"]["image_logits"][0],
                           votes["image_logits"][0], atol=1e-5)
  else:
    assert not np.allclose(text_after, text_before, atol=1e-4)
    if kind == "cross_attention":  # one-way: text reads the image, the image never reads text
      np.testing.assert_allclose(image_after, image_before, atol=1e-6)
    else:
      assert not np.allclose(image_after, image_before, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_bfloat16_compute_matches_float32(kind):
  """bf16 compute, f32 params: relative error of all logits (8 examples) <= 1e-2.

  Measured over 4 parameter seeds: 0.5-0.9 %, of which ~0.6 % already comes from the bf16
  towers (the image-only `digit` head alone)."""
  rng = np.random.default_rng(0)
  mask = np.arange(8)[None] < rng.integers(3, 9, 8)[:, None]
  data = {"image": jnp.asarray(rng.uniform(-1, 1, (8, 8, 8, 1)), jnp.float32),
          "text_ids": jnp.asarray(np.where(mask, rng.integers(5, 40, (8, 8)), 0), jnp.int32),
          "text_mask": jnp.asarray(mask)}
  model32 = make_model(kind)
  model16 = make_model(kind, dtype="bfloat16")
  params = random_params(model32, data)
  both = compiled(lambda p, d: (model32.apply(p, d), model16.apply(p, d)), params, data)
  reference, low = both(params, data)
  assert {out.dtype for out in low.values()} == {jnp.dtype(jnp.float32)}
  reference = np.concatenate([np.ravel(reference[name]) for name in sorted(reference)])
  low = np.concatenate([np.ravel(low[name]) for name in sorted(low)])
  assert np.abs(reference).max() > 0.1
  error = np.linalg.norm(low - reference) / np.linalg.norm(reference)
  assert 0 < error <= 1e-2, (kind, error)


def test_model_text_only_and_image_only():
  data = batch()
  for modalities, heads in ((("image",), {"label", "pooled", "digit"}),
                            (("text",), {"label", "pooled"})):
    for kind in KINDS:
      model = make_model(kind, modalities)
      shapes = jax.eval_shape(model.init, RNG, data)
      assert set(shapes["params"]) == {f"{m}_encoder" for m in modalities} | {"fusion", "heads"}
      outputs = jax.eval_shape(model.apply, shapes, data)
      assert {name: out.shape for name, out in outputs.items()} == {
          name: (3, 10 if name == "digit" else 3) for name in heads}, (kind, modalities)


class FrameTower(nn.Module):
  """A dummy audio tower: waveforms [B, samples] -> frames of 8 samples -> Dense -> Tokens."""

  @nn.compact
  def __call__(self, waveforms, *, train):
    frames = waveforms.reshape(waveforms.shape[0], -1, 8)
    return Tokens(nn.Dense(16, name="frame_embedding")(frames), jnp.ones(frames.shape[:2], bool))


@pytest.mark.parametrize("kind", KINDS)
def test_an_audio_tower_plugs_into_the_model(kind):
  config = model_config(kind)
  config.heads.sound = dict(input="audio", pooling="cls")
  specs = head_specs(config, ("image", "text", "audio"), lambda name: 5)
  model = build_model(config, modalities=("image", "text"), vocab_size=40, heads=specs)
  model = MultimodalModel({**model.towers, "audio": FrameTower()}, model.fusion, model.heads)
  data = dict(batch(), audio=jnp.asarray(np.random.default_rng(2).normal(size=(3, 48)),
                                         jnp.float32))
  params = random_params(model, data)
  assert set(params["params"]) == {"image_encoder", "text_encoder", "audio_encoder",
                                   "fusion", "heads"}
  assert set(params["params"]["audio_encoder"]) == {"frame_embedding"}
  other_sound = dict(data, audio=data["audio"][::-1])
  both = compiled(lambda p: (model.apply(p, data), model.apply(p, other_sound)), params)
  outputs, changed = both(params)
  assert {name: out.shape for name, out in outputs.items()} == {
      "label": (3, 5), "pooled": (3, 5), "digit": (3, 5), "sound": (3, 5)}
  assert not np.allclose(changed["label"], outputs["label"], atol=1e-5), kind


def test_build_model_builds_the_audio_tower():
  config = model_config("merged")
  config.audio = dict(variant="nano/4", sample_rate=8000, n_fft=64, hop_length=32, n_mels=16)
  specs = head_specs(config, ("text", "audio"), lambda name: 3)
  model = build_model(config, modalities=("text", "audio"), vocab_size=40, heads=specs)
  data = dict(batch(), audio=jnp.zeros((3, 800), jnp.float32))
  shapes = jax.eval_shape(model.init, RNG, data)
  assert set(shapes["params"]) == {"text_encoder", "audio_encoder", "fusion", "heads"}
  assert "patch_embedding" in shapes["params"]["audio_encoder"]
  assert set(shapes["params"]["fusion"]) >= {"cls", "audio_type", "text_type", "encoder"}


# ---- pooling ----

def padded_sequence():
  rng = np.random.default_rng(4)
  tokens = jnp.asarray(rng.normal(size=(3, 5, 8)), jnp.float32)
  mask = jnp.asarray(np.arange(5)[None] < np.array([5, 2, 1])[:, None])
  return Tokens(tokens, mask)


def with_new_padding(seq: Tokens) -> Tokens:
  noise = jnp.asarray(np.random.default_rng(5).normal(size=seq.tokens.shape) * 100, jnp.float32)
  return Tokens(jnp.where(seq.mask[..., None], seq.tokens, noise), seq.mask)


def test_cls_pooling_takes_token_0():
  seq = padded_sequence()
  np.testing.assert_array_equal(pool(seq, "cls"), seq.tokens[:, 0])


def test_mean_pooling_ignores_padded_tokens():
  seq = padded_sequence()
  tokens, mask = np.asarray(seq.tokens), np.asarray(seq.mask)
  expected = np.stack([tokens[i, mask[i]].mean(axis=0) for i in range(3)])
  np.testing.assert_allclose(pool(seq, "mean"), expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(pool(with_new_padding(seq), "mean"), expected, rtol=1e-6,
                             atol=1e-6)


def test_map_pooling_ignores_padded_tokens():
  seq = padded_sequence()
  pooling = MapPooling(num_heads=2)
  params = random_params(pooling, seq)
  pooled = pooling.apply(params, seq)
  assert pooled.shape == (3, 8)
  np.testing.assert_allclose(pooling.apply(params, with_new_padding(seq)), pooled, atol=1e-5)
  # Row 1 has two real tokens: the same as pooling a sequence of just those two.
  short = Tokens(seq.tokens[1:2, :2], jnp.ones((1, 2), bool))
  np.testing.assert_allclose(pooling.apply(params, short)[0], pooled[1], atol=1e-5)
  changed = Tokens(seq.tokens.at[1, 1].add(1.0), seq.mask)
  assert not np.allclose(pooling.apply(params, changed)[1], pooled[1], atol=1e-5)


def test_map_head_parameters():
  head = ClassificationHead(3, "map", num_heads=2)
  shapes = jax.eval_shape(head.init, RNG, padded_sequence())["params"]
  assert set(shapes) == {"map", "norm", "logits"}
  assert set(shapes["map"]) == {"probe", "attention", "norm", "mlp"}
  assert shapes["map"]["probe"].shape == (1, 1, 8)


def test_late_vote_is_a_softmax_weighted_sum_of_per_modality_logits():
  streams = make_streams(("image", "text"))
  streams = {name: Tokens(s.tokens[..., :8], s.mask) for name, s in streams.items()}
  head = VoteHead(3, "mean")
  params = random_params(head, streams)
  assert set(params["params"]) == {"image", "text", "vote"}
  params["params"]["vote"] = {"image": jnp.float32(0.7), "text": jnp.float32(-0.4)}
  logits, state = head.apply(params, streams, mutable=["intermediates"])
  per_modality = {name: ClassificationHead(3, "mean").apply(
      {"params": params["params"][name]}, streams[name]) for name in ("image", "text")}
  np.testing.assert_allclose(state["intermediates"]["image_logits"][0], per_modality["image"])
  weights = np.exp([0.7, -0.4]) / np.exp([0.7, -0.4]).sum()
  expected = weights[0] * per_modality["image"] + weights[1] * per_modality["text"]
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)


def test_fused_output_is_a_pytree():
  fused = Fused(None, make_streams(("text",)))
  assert len(jax.tree.leaves(fused)) == 2


# ---- config errors ----

def test_config_errors_name_the_field():
  with pytest.raises(ConfigError, match=r"^config.model.fusion.kind: unknown fusion 'early'"):
    fusion_of("early")
  with pytest.raises(ConfigError, match="config.model.fusion: kind 'merged' takes no field "
                                        "'query_modality'"):
    fusion_of("merged", query_modality="text")
  with pytest.raises(ConfigError, match="config.model.fusion.depth"):
    fusion_of("late", depth=-1)
  config = model_config("co_attention")
  config.fusion.kind = "co-attention"
  with pytest.raises(ConfigError, match="config.model.fusion.kind: unknown fusion 'co-attention'"):
    build_model(config, modalities=("image",), vocab_size=40, heads=())
  config = model_config("late")
  config.heads.label.pooling = "max"
  with pytest.raises(ConfigError, match="config.model.heads.label.pooling: unknown pooling 'max';"
                                        " expected one of cls, mean, map"):
    head_specs(config, ("image",), lambda name: 2)
  config = model_config("late")
  config.heads.pooled.num_heads = 0
  with pytest.raises(ConfigError, match="config.model.heads.pooled.num_heads"):
    head_specs(config, ("image",), lambda name: 2)
