"""Vision-language pre-training model: image and text towers, fusion, and one head per
objective (`config.losses` names which run).

  itc      contrastive image-text: each tower's token 0 through its own bias-free Dense
           (`itc/image_projection`, `itc/text_projection`) to `embed_dim`, L2-normalised;
           a learned temperature `itc/log_scale` (and, for the sigmoid loss, `itc/bias`).
  itm      image-text matching through the fusion: every image with its own text, with a
           hard negative text and every text with a hard negative image, mined in-batch
           from the ITC similarities (sampled in training, hardest in evaluation), never
           the positive itself nor an identical text. A negative is drawn with probability
           softmax(scale * cosine similarity): scale = the contrastive logit scale (ALBEF),
           or a fixed `negative_scale` > 0 for softer mining. Head `itm_head` (2 classes,
           on the fused token 0).
  mlm      masked language modelling through the fusion: the text tower reads the
           masked text, fusion lets it see the image, `mlm_head` predicts the originals.
  caption  captioning LM: `caption_decoder` (causal, cross-attending to the image tokens)
           predicts each next caption token (teacher forcing).

Parameter paths `image_encoder/...`, `text_encoder/...` and `fusion/...` are those of
`MultimodalModel`, so a pre-trained checkpoint initialises a fine-tuning model with other
heads (`config.init_from`). Randomness (negatives, masking) comes from the "sample" RNG
stream in training; evaluation is deterministic (hardest negatives, masking from a
fixed key).
"""

from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.models.heads import ClassificationHead
from mmjax.models.layers import Dtype, Tokens, dense
from mmjax.objectives import losses

OBJECTIVES = ("itc", "itm", "mlm", "caption")
CONTRASTIVE = ("softmax", "sigmoid")
# Initial temperatures: CLIP starts at 1/0.07; SigLIP at scale 10, bias -10.
INIT_LOG_SCALE = {"softmax": float(np.log(1 / 0.07)), "sigmoid": float(np.log(10.0))}
INIT_BIAS = -10.0
MAX_LOG_SCALE = float(np.log(100.0))
EVAL_MASK_SEED = 0


def normalize(x: jax.Array) -> jax.Array:
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


class Contrastive(nn.Module):
  """Projections of each tower's token 0 to the shared space, and the temperature."""

  embed_dim: int
  kind: str = "softmax"
  param_dtype: Dtype = jnp.float32

  def setup(self):
    kw = dict(dtype=jnp.float32, param_dtype=self.param_dtype, use_bias=False)
    self.image_projection = dense(self.embed_dim, "image_projection", **kw)
    self.text_projection = dense(self.embed_dim, "text_projection", **kw)
    self.log_scale = self.param("log_scale", nn.initializers.constant(INIT_LOG_SCALE[self.kind]),
                                (), jnp.float32)
    if self.kind == "sigmoid":
      self.bias = self.param("bias", nn.initializers.constant(INIT_BIAS), (), jnp.float32)

  def image(self, tokens: Tokens) -> jax.Array:
    return normalize(self.image_projection(tokens.tokens[:, 0].astype(jnp.float32)))

  def text(self, tokens: Tokens) -> jax.Array:
    return normalize(self.text_projection(tokens.tokens[:, 0].astype(jnp.float32)))

  def temperature(self) -> dict[str, jax.Array]:
    # The scale is capped at 100 (as CLIP does) so the logits cannot run away.
    out = {"itc_log_scale": jnp.minimum(self.log_scale, MAX_LOG_SCALE)}
    if self.kind == "sigmoid":
      out["itc_bias"] = self.bias
    return out


class MlmHead(nn.Module):
  """Tokens [B, T, D] -> vocabulary logits [B, T, V] float32 (Dense, GELU, LayerNorm,
  Dense), as BERT's prediction head."""

  vocab_size: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.gelu(dense(tokens.shape[-1], "transform", **kw)(tokens))
    x = nn.LayerNorm(name="norm", **kw)(x)
    return dense(self.vocab_size, "logits", **kw)(x).astype(jnp.float32)


def _take(seq: Tokens, index: jax.Array) -> Tokens:
  return Tokens(seq.tokens[index], seq.mask[index])


def _stack(*seqs: Tokens) -> Tokens:
  return Tokens(jnp.concatenate([s.tokens for s in seqs]),
                jnp.concatenate([s.mask for s in seqs]))


class PretrainModel(nn.Module):
  """batch (image, text_ids, text_mask, example_mask) -> what the objectives need.

  `__call__` returns (only for the objectives asked for):
    image_emb, text_emb   [B, E] L2-normalised; itc_log_scale (and itc_bias) scalars.
    itm_logits            [B, 3, 2]: (image, its text), (image, negative text),
                          (negative image, text); itm_weights [B, 3] (0 where padding or
                          no negative exists).
    mlm_logits [B, T, V], mlm_targets [B, T], mlm_weights [B, T] (1 on masked tokens).
    caption_logits [B, T-1, V], caption_targets [B, T-1], caption_weights [B, T-1].
  `embed` returns just the normalised embeddings of the modalities in the batch.
  """

  image_encoder: nn.Module
  text_encoder: nn.Module
  fusion: nn.Module | None
  caption_decoder: nn.Module | None
  objectives: tuple[str, ...]
  embed_dim: int
  vocab_size: int
  contrastive: str = "softmax"
  negative_scale: float = 0.0
  mask_prob: float = 0.15
  mask_id: int = 4
  num_special: int = 5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    self.itc = Contrastive(self.embed_dim, self.contrastive, self.param_dtype)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if "itm" in self.objectives:
      self.itm_head = ClassificationHead(2, "cls", **kw)
    if "mlm" in self.objectives:
      self.mlm_head = MlmHead(self.vocab_size, **kw)

  def embed(self, batch: Mapping[str, jax.Array], *, train: bool = False
            ) -> dict[str, jax.Array]:
    """{"image": [B, E], "text": [B, E]} for the modalities present in `batch`."""
    out = {}
    if "image" in batch:
      out["image"] = self.itc.image(self.image_encoder(batch["image"], train=train))
    if "text_ids" in batch:
      out["text"] = self.itc.text(self.text_encoder(batch["text_ids"], batch["text_mask"],
                                                    train=train))
    return out

  def _rng(self, train: bool) -> jax.Array:
    return self.make_rng("sample") if train else jax.random.key(EVAL_MASK_SEED)

  def __call__(self, batch: Mapping[str, jax.Array], *, train: bool = False
               ) -> dict[str, jax.Array]:
    ids, text_mask = batch["text_ids"], batch["text_mask"].astype(bool)
    example_mask = batch.get("example_mask")
    if example_mask is None:
      example_mask = jnp.ones(ids.shape[:1], bool)
    image = self.image_encoder(batch["image"], train=train)
    text = self.text_encoder(ids, text_mask, train=train)
    image_emb, text_emb = self.itc.image(image), self.itc.text(text)
    out = dict(image_emb=image_emb, text_emb=text_emb, **self.itc.temperature())

    if "itm" in self.objectives:
      out.update(self._itm(image, text, image_emb, text_emb, ids, example_mask, train))
    if "mlm" in self.objectives:
      masked, targets, weights = losses.mask_tokens(
          self._rng(train), ids, text_mask, vocab_size=self.vocab_size, mask_id=self.mask_id,
          num_special=self.num_special, prob=self.mask_prob)
      masked_text = self.text_encoder(masked, text_mask, train=train)
      fused = self.fusion({"image": image, "text": masked_text}, train=train)
      out.update(mlm_logits=self.mlm_head(fused.streams["text"].tokens), mlm_targets=targets,
                 mlm_weights=weights * example_mask[:, None])
    if "caption" in self.objectives:
      inputs, targets, weights = losses.next_token_targets(ids, text_mask)
      out.update(caption_logits=self.caption_decoder(inputs, image, train=train),
                 caption_targets=targets, caption_weights=weights * example_mask[:, None])
    return out

  def _itm(self, image: Tokens, text: Tokens, image_emb: jax.Array, text_emb: jax.Array,
           ids: jax.Array, example_mask: jax.Array, train: bool) -> dict[str, jax.Array]:
    # Sampling logits: the similarities at the contrastive temperature, as ALBEF draws.
    if self.negative_scale:
      scale = self.negative_scale
    else:
      scale = jnp.exp(self.itc.temperature()["itc_log_scale"])
    sim = jax.lax.stop_gradient(scale * image_emb @ text_emb.T)
    # A text identical to the positive is no negative (captions can repeat in a batch).
    same_text = jnp.all(ids[:, None, :] == ids[None, :, :], axis=-1)
    text_rng, image_rng = jax.random.split(self._rng(train))
    neg_text, text_ok = losses.sample_negatives(text_rng, sim, example_mask, same_text,
                                                hardest=not train)
    neg_image, image_ok = losses.sample_negatives(image_rng, sim.T, example_mask, same_text,
                                                  hardest=not train)
    pairs_image = _stack(image, image, _take(image, neg_image))
    pairs_text = _stack(text, _take(text, neg_text), text)
    fused = self.fusion({"image": pairs_image, "text": pairs_text}, train=train)
    logits = self.itm_head(fused.tokens)  # [3B, 2]
    batch = ids.shape[0]
    logits = logits.reshape(3, batch, 2).transpose(1, 0, 2)
    weights = jnp.stack([example_mask, text_ok & example_mask, image_ok & example_mask], axis=1)
    return {"itm_logits": logits, "itm_weights": weights.astype(jnp.float32)}
