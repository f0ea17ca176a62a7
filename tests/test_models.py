import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmjax.config import ConfigError
from mmjax.models import text as text_lib
from mmjax.models import vit as vit_lib
from mmjax.models.fusion import CrossAttentionFusion, build_fusion
from mmjax.models.heads import HeadSpec
from mmjax.models.layers import BlockOptions, Encoder, MultiHeadAttention, Tokens, sincos_2d
from mmjax.models.model import build_model, head_specs

RNG = jax.random.key(0)


def model_config(**kw):
  return ml_collections.ConfigDict(dict(dict(
      modalities="image,text", dtype="float32", param_dtype="float32", dropout_rate=0.0,
      image=dict(variant="nano/2"), text=dict(variant="nano", max_len=12),
      fusion=dict(kind="cross_attention", depth=1, width=32, num_heads=2, mlp_dim=64),
      heads=dict(label=dict(input="fused", pooling="cls"),
                 digit=dict(input="image", pooling="mean"))), **kw))


def make_model(modalities="image,text", **kw):
  config = model_config(modalities=modalities, **kw)
  mods = tuple(modalities.split(","))
  heads = head_specs(config, mods, lambda name: {"label": 3, "digit": 10}[name])
  return build_model(config, modalities=mods, vocab_size=50, heads=heads)


def batch(size=3, length=12, vocab=50, seed=0):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(3, length, size)
  mask = np.arange(length)[None] < lengths[:, None]
  return {"image": jnp.asarray(rng.uniform(-1, 1, (size, 8, 8, 1)), jnp.float32),
          "text_ids": jnp.asarray(np.where(mask, rng.integers(5, vocab, (size, length)), 0),
                                  jnp.int32),
          "text_mask": jnp.asarray(mask)}


def test_vit_variants_and_shapes():
  assert vit_lib.parse_variant("B/16") == dict(width=768, depth=12, mlp_dim=3072, num_heads=12,
                                               patch_size=16)
  assert vit_lib.parse_variant("S/16", depth=4)["depth"] == 4
  with pytest.raises(ValueError, match="NAME/PATCH"):
    vit_lib.parse_variant("S")
  with pytest.raises(ValueError, match="unknown model size 'Q'"):
    vit_lib.parse_variant("Q/16")
  vit = vit_lib.ViT(**vit_lib.parse_variant("nano/2"))
  images = jnp.zeros((2, 8, 8, 3))
  out, _ = vit.init_with_output(RNG, images, train=False)
  assert out.tokens.shape == (2, 1 + 16, 32)
  assert out.mask.shape == (2, 17) and bool(out.mask.all())


def test_sincos2d_position_embeddings():
  pos = sincos_2d(4, 4, 32)
  assert pos.shape == (16, 32)
  # Row-major: patch 5 is row 1, column 1; its y and x halves are equal.
  np.testing.assert_allclose(pos[5, :16], pos[5, 16:])
  np.testing.assert_allclose(pos[0], np.tile(np.repeat([0.0, 1.0], 8), 2))  # sin, cos of 0
  # Similarity falls with distance: from the corner, (0, 1) > (1, 1) > (2, 2) > (3, 3).
  similarity = pos @ pos[0]
  assert similarity[1] > similarity[5] > similarity[10] > similarity[15]
  with pytest.raises(ConfigError, match="divisible by 4"):
    sincos_2d(4, 4, 30)


def test_vit_sincos2d_has_no_position_parameter_and_sees_positions():
  vit = vit_lib.ViT(**vit_lib.parse_variant("nano/8"), posemb="sincos2d")
  images = jnp.zeros((1, 32, 32, 3))
  params = vit.init(RNG, images, train=False)
  assert "pos_embedding" not in params["params"]
  tokens = vit.apply(params, images, train=False).tokens
  # Identical (blank) patches differ only by their fixed positions.
  assert tokens.shape == (1, 17, 32)
  assert float(jnp.abs(tokens[0, 1] - tokens[0, 2]).max()) > 1e-3
  with pytest.raises(ConfigError, match="posemb: unknown position embedding 'rope'"):
    vit_lib.ViT(**vit_lib.parse_variant("nano/8"), posemb="rope").init(RNG, images,
                                                                      train=False)


def test_text_encoder_shapes_and_padding_invariance():
  encoder = text_lib.TextEncoder(vocab_size=50, max_len=12, **text_lib.parse_variant("nano"))
  data = batch()
  params = encoder.init(RNG, data["text_ids"], data["text_mask"], train=False)
  out = encoder.apply(params, data["text_ids"], data["text_mask"], train=False)
  assert out.tokens.shape == (3, 12, 32)
  # Whatever the padded positions hold, real positions give the same outputs.
  noisy_ids = jnp.where(data["text_mask"], data["text_ids"], 17)
  noisy = encoder.apply(params, noisy_ids, data["text_mask"], train=False)
  mask = np.asarray(data["text_mask"])
  np.testing.assert_allclose(np.asarray(noisy.tokens)[mask], np.asarray(out.tokens)[mask],
                             atol=1e-6)
  assert not np.allclose(np.asarray(noisy.tokens)[~mask], np.asarray(out.tokens)[~mask])


def test_attention_ignores_masked_keys():
  attention = MultiHeadAttention(num_heads=2)
  x = jax.random.normal(RNG, (2, 5, 8))
  mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)[:, None, None, :]
  params = attention.init(RNG, x, x, mask)
  out = attention.apply(params, x, x, mask)
  changed = x.at[0, 3:].set(100.0)
  np.testing.assert_allclose(attention.apply(params, changed, changed, mask)[0, :3], out[0, :3],
                             atol=1e-5)


def test_attention_sows_its_logits_only_when_asked():
  attention = MultiHeadAttention(num_heads=2)
  rng = np.random.default_rng(0)
  queries = jnp.asarray(rng.normal(size=(2, 3, 8)), jnp.float32)
  keys = jnp.asarray(rng.normal(size=(2, 5, 8)), jnp.float32)
  mask = jnp.asarray([[True] * 5, [True, True, True, False, False]])[:, None, None, :]
  params = attention.init(RNG, queries, keys, mask)
  plain, state = attention.apply(params, queries, keys, mask, mutable=["intermediates"])
  logits = state["intermediates"]["logits"][0]
  assert logits.shape == (2, 2, 3, 5)
  assert float(logits[1, :, :, 3:].max()) == -1e9  # masked keys
  # softmax(logits) @ values, through the out projection, is the layer's output.
  p = params["params"]
  values = (keys @ p["value"]["kernel"] + p["value"]["bias"]).reshape(2, 5, 2, 4)
  attended = jnp.einsum("bnts,bsnh->btnh", jax.nn.softmax(logits, -1), values).reshape(2, 3, 8)
  np.testing.assert_allclose(attended @ p["out"]["kernel"] + p["out"]["bias"], plain,
                             rtol=1e-5, atol=1e-5)
  assert not attention.apply(params, queries, keys, mask, mutable=["cache"])[1]


def test_cross_attention_fusion_reads_both_modalities():
  fusion = CrossAttentionFusion(width=16, depth=1, num_heads=2, mlp_dim=32)
  rng = np.random.default_rng(1)
  text = Tokens(jnp.asarray(rng.normal(size=(2, 6, 24)), jnp.float32), jnp.ones((2, 6), bool))
  image = Tokens(jnp.asarray(rng.normal(size=(2, 5, 32)), jnp.float32), jnp.ones((2, 5), bool))
  params = fusion.init(RNG, {"text": text, "image": image}, train=False)
  assert set(params["params"]) == {"text_projection", "image_projection", "cross_encoder"}
  out = fusion.apply(params, {"text": text, "image": image}, train=False).tokens
  assert out.tokens.shape == (2, 6, 16)  # text (query) tokens
  other = Tokens(image.tokens[::-1], image.mask)
  changed = fusion.apply(params, {"text": text, "image": other}, train=False).tokens
  assert not np.allclose(out.tokens, changed.tokens)  # outputs depend on the image


def test_single_modality_fusion_is_self_attention():
  fusion = CrossAttentionFusion(width=16, depth=2, num_heads=2, mlp_dim=32)
  image = Tokens(jnp.ones((2, 5, 16)), jnp.ones((2, 5), bool))
  params = fusion.init(RNG, {"image": image}, train=False)
  assert set(params["params"]) == {"self_encoder"}
  assert set(params["params"]["self_encoder"]) == {"block_0", "block_1", "norm_out"}


def test_unknown_fusion_kind():
  with pytest.raises(ValueError, match="unknown fusion 'early'; expected one of concat, merged"):
    build_fusion("early", width=8, depth=1, num_heads=1, mlp_dim=8)


@pytest.mark.parametrize("modalities, towers, heads", [
    ("image,text", {"image_encoder", "text_encoder"}, {"label", "digit"}),
    ("image", {"image_encoder"}, {"label", "digit"}),
    ("text", {"text_encoder"}, {"label"}),  # the image-reading head is left out
])
def test_model_modalities_and_heads(modalities, towers, heads):
  model = make_model(modalities)
  outputs, variables = model.init_with_output(RNG, batch(), train=False)
  assert set(outputs) == heads
  assert outputs["label"].shape == (3, 3) and outputs["label"].dtype == jnp.float32
  if "digit" in heads:
    assert outputs["digit"].shape == (3, 10)
  assert set(variables["params"]) == towers | {"fusion", "heads"}
  assert set(variables["params"]["heads"]) == heads


def test_head_spec_errors():
  from mmjax.config import ConfigError
  config = model_config()
  config.heads.digit.input = "depth_map"
  with pytest.raises(ConfigError, match="heads.digit.input: unknown input 'depth_map'"):
    head_specs(config, ("image",), lambda name: 2)
  config = model_config()
  config.heads.label.pooling = "max"
  with pytest.raises(ConfigError, match="heads.label.pooling: unknown pooling 'max'"):
    head_specs(config, ("image",), lambda name: 2)
  assert head_specs(model_config(), ("text",), lambda name: 4) == (
      HeadSpec("label", "fused", 4, "cls"),)


def test_a_head_reads_one_modality_stream_after_fusion():
  """`input="fused:text"` reads the text stream out of the fusion (in a merged sequence,
  the question's tokens after they attended to the image), not token 0 of the joint one."""
  from mmjax.models.heads import ClassificationHead
  config = model_config(
      fusion=dict(kind="merged", depth=1, width=32, num_heads=2, mlp_dim=64),
      heads=dict(label=dict(input="fused:text", pooling="cls"),
                 sound=dict(input="fused:audio", pooling="cls")))
  heads = head_specs(config, ("image", "text"), lambda name: 3)
  assert heads == (HeadSpec("label", "fused:text", 3, "cls"),)  # no audio, no audio head
  model = build_model(config, modalities=("image", "text"), vocab_size=50, heads=heads)
  data = batch()
  params = perturbed(model.init(RNG, data, train=False))
  _, fused = model.apply(params, data, method="features")
  expected = ClassificationHead(3).apply({"params": params["params"]["heads"]["label"]},
                                         fused.streams["text"])
  np.testing.assert_allclose(model.apply(params, data)["label"], expected, atol=1e-6)
  joint = ClassificationHead(3).apply({"params": params["params"]["heads"]["label"]},
                                      fused.tokens)
  assert np.abs(np.asarray(joint - expected)).max() > 1e-3  # token 0 is another token
  config.heads.label.input = "fused:lidar"
  with pytest.raises(ConfigError, match="heads.label.input: unknown input 'fused:lidar'"):
    head_specs(config, ("image", "text"), lambda name: 3)


def perturbed(params):
  """Makes the zero-initialised heads non-trivial so logits depend on the features."""
  return jax.tree.map(lambda p: p + 0.1 * jax.random.normal(RNG, p.shape), params)


def test_model_logits_ignore_padding():
  model = make_model()
  data = batch()
  params = perturbed(model.init(RNG, data, train=False))
  logits = model.apply(params, data, train=False)["label"]
  noisy = dict(data, text_ids=jnp.where(data["text_mask"], data["text_ids"], 33))
  np.testing.assert_allclose(model.apply(params, noisy, train=False)["label"], logits, atol=1e-5)
  changed = dict(data, text_ids=jnp.where(data["text_mask"], (data["text_ids"] + 1) % 50,
                                          data["text_ids"]))
  assert not np.allclose(model.apply(params, changed, train=False)["label"], logits, atol=1e-5)


def test_bfloat16_compute_keeps_float32_params():
  model = make_model(dtype="bfloat16")
  outputs, variables = model.init_with_output(RNG, batch(), train=False)
  assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  assert outputs["label"].dtype == jnp.float32
  inner = model.bind(variables).text_encoder
  out = inner(batch()["text_ids"], batch()["text_mask"], train=False)
  assert out.tokens.dtype == jnp.bfloat16


def test_dropout_only_in_training():
  model = make_model(dropout_rate=0.5)
  data = batch()
  params = perturbed(model.init(RNG, data, train=False))
  eval_a = model.apply(params, data, train=False)["label"]
  np.testing.assert_array_equal(eval_a, model.apply(params, data, train=False)["label"])
  train_a = model.apply(params, data, train=True, rngs={"dropout": jax.random.key(1)})["label"]
  train_b = model.apply(params, data, train=True, rngs={"dropout": jax.random.key(2)})["label"]
  assert not np.allclose(train_a, train_b)


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
def test_remat_policies_keep_parameters_outputs_and_gradients(policy):
  rng = np.random.default_rng(0)
  x = Tokens(jnp.asarray(rng.normal(size=(2, 5, 16)), jnp.float32),
             jnp.asarray([[True] * 5, [True] * 3 + [False] * 2]))

  def loss_and_grads(remat):
    encoder = Encoder(2, 2, 32, dropout_rate=0.1, options=BlockOptions(remat=remat))
    params = encoder.init(jax.random.key(0), x, train=False)

    def loss(params):
      out = encoder.apply(params, x, train=True, rngs={"dropout": jax.random.key(1)})
      return jnp.mean(out.tokens ** 2)

    return jax.value_and_grad(loss)(params), str(jax.make_jaxpr(jax.grad(loss))(params))

  (loss, grads), plain_jaxpr = loss_and_grads("none")
  (remat_loss, remat_grads), remat_jaxpr = loss_and_grads(policy)
  assert "remat" in remat_jaxpr and "remat" not in plain_jaxpr  # jax.checkpoint's primitive
  assert jax.tree.structure(remat_grads) == jax.tree.structure(grads)
  np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(remat_grads), jax.tree.leaves(grads), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_an_unknown_remat_policy_names_the_field():
  with pytest.raises(ConfigError, match=r"config.model.block.remat: unknown policy 'some'"):
    BlockOptions(remat="some")


def test_a_scanned_stack_computes_what_the_unrolled_stack_does():
  rng = np.random.default_rng(0)
  x = Tokens(jnp.asarray(rng.normal(size=(2, 5, 16)), jnp.float32),
             jnp.asarray([[True] * 5, [True] * 3 + [False] * 2]))
  scanned = Encoder(3, 2, 32, options=BlockOptions(scan=True, remat="dots"))
  params = scanned.init(jax.random.key(0), x, train=False)["params"]
  stacked = params["scanned_blocks"]["block"]
  assert stacked["self_attention"]["query"]["kernel"].shape == (3, 16, 16)
  unrolled = {f"block_{i}": jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(3)}
  unrolled["norm_out"] = params["norm_out"]
  got, sown = scanned.apply({"params": params}, x, train=False, mutable=["intermediates"])
  want = Encoder(3, 2, 32).apply({"params": unrolled}, x, train=False)
  np.testing.assert_allclose(got.tokens, want.tokens, atol=1e-5)
  logits = sown["intermediates"]["scanned_blocks"]["block"]["self_attention"]["logits"][0]
  assert logits.shape == (3, 2, 2, 5, 5)  # one row of attention logits per layer
