"""Pre-training: a weighted sum of the objectives in `config.losses` ({name: weight}).

Objectives (see mmjax/models/pretrain.py for what the model computes for each):
  itc      contrastive, `contrastive` = "softmax" (CLIP / InfoNCE) or "sigmoid" (SigLIP);
           negatives are the whole global batch.
  itm      matched / unmatched cross-entropy on (positive, hard negative text, hard
           negative image) triples.
  mlm      cross-entropy on the masked text tokens only.
  caption  next-token cross-entropy with teacher forcing (`label_smoothing` applies).

Every objective's loss and accuracy are logged (`itc/loss`, `itm/accuracy`, ...) beside
the weighted total `loss`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from mmjax.config import ConfigError
from mmjax.data import pipeline
from mmjax.evaluate.evaluators import PretrainEvaluator
from mmjax.models.model import build_pretrain_model
from mmjax.objectives import losses


@dataclasses.dataclass(frozen=True)
class PretrainTask:
  weights: dict[str, float]       # objective -> loss weight
  contrastive: str = "softmax"
  label_smoothing: float = 0.0    # for the captioning LM
  mask_prob: float = 0.15         # MLM: fraction of eligible text tokens selected
  # ITM negatives ~ softmax(scale * similarity); 0: scale = the ITC logit scale (ALBEF).
  negative_scale: float = 0.0

  @property
  def targets(self) -> tuple[str, ...]:
    return ()  # every target comes from the inputs themselves

  def _itc(self, outputs, mask):
    if self.contrastive == "sigmoid":
      return losses.itc_sigmoid(outputs["image_emb"], outputs["text_emb"],
                                outputs["itc_log_scale"], outputs["itc_bias"], mask)
    return losses.itc_softmax(outputs["image_emb"], outputs["text_emb"],
                              outputs["itc_log_scale"], mask)

  def losses(self, outputs: dict[str, jax.Array], batch: dict[str, jax.Array]
             ) -> dict[str, dict[str, jax.Array]]:
    """{objective: {"loss", "accuracy", ...}} for every objective in `weights`."""
    mask = batch["example_mask"].astype(bool)
    result = {}
    if "itc" in self.weights:
      loss, metrics = self._itc(outputs, mask)
      result["itc"] = dict(loss=loss, **metrics, scale=jnp.exp(outputs["itc_log_scale"]))
    if "itm" in self.weights:
      logits = outputs["itm_logits"]  # [B, 3, 2]: positive, negative text, negative image
      labels = jnp.broadcast_to(jnp.array([1, 0, 0], jnp.int32), logits.shape[:2])
      loss, accuracy = losses.token_cross_entropy(logits, labels, outputs["itm_weights"])
      result["itm"] = dict(loss=loss, accuracy=accuracy)
    for name in ("mlm", "caption"):
      if name in self.weights:
        smoothing = self.label_smoothing if name == "caption" else 0.0
        loss, accuracy = losses.token_cross_entropy(
            outputs[f"{name}_logits"], outputs[f"{name}_targets"], outputs[f"{name}_weights"],
            label_smoothing=smoothing)
        result[name] = dict(loss=loss, accuracy=accuracy)
    return result

  def loss(self, outputs: dict[str, jax.Array], batch: dict[str, jax.Array]
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    per_objective = self.losses(outputs, batch)
    total = sum(self.weights[name] * values["loss"] for name, values in per_objective.items())
    metrics = {f"{name}/{key}": value for name, values in per_objective.items()
               for key, value in values.items()}
    metrics["loss"] = total
    return total, metrics

  def predict(self, outputs: dict[str, jax.Array]) -> dict[str, dict[str, jax.Array]]:
    """Per-example values the pre-training evaluators aggregate (all leading dim B)."""
    out = {"embeddings": {"image": outputs["image_emb"], "text": outputs["text_emb"]}}
    if "itm_logits" in outputs:
      predicted = jnp.argmax(outputs["itm_logits"], -1) == jnp.array([1, 0, 0])
      out["itm"] = {"correct": (predicted * outputs["itm_weights"]).sum(-1),
                    "count": outputs["itm_weights"].sum(-1)}
    for name in ("mlm", "caption"):
      if f"{name}_logits" in outputs:
        weights = outputs[f"{name}_weights"]
        hit = jnp.argmax(outputs[f"{name}_logits"], -1) == outputs[f"{name}_targets"]
        out[name] = {"correct": (hit * weights).sum(-1), "count": weights.sum(-1)}
    return out

  def build(self, config: ml_collections.ConfigDict, dataset: pipeline.Dataset,
            modalities: tuple[str, ...], finetune: Any) -> tuple[pipeline.Preprocessor, Any]:
    """(preprocessor of images and texts, PretrainModel of `config.model`)."""
    del finetune  # pre-training trains everything
    preprocessor = pipeline.make_preprocessor(dataset, config, modalities, self.targets)
    if set(modalities) != {"image", "text"} or preprocessor.text_encoder is None:
      raise ConfigError("config.model.modalities: pre-training needs image,text, got "
                        f"{config.model.modalities}")
    tokenizer = preprocessor.text_encoder.tokenizer
    model = build_pretrain_model(
        config.model, objectives=tuple(self.weights),
        vocab_size=preprocessor.text_encoder.vocab_size, contrastive=self.contrastive,
        mask_prob=self.mask_prob, negative_scale=self.negative_scale,
        mask_id=tokenizer.mask_token_id, num_special=max(tokenizer.all_special_ids) + 1)
    return preprocessor, model

  def evaluator(self, exp: Any, predict_fn: Any, batches: Any) -> PretrainEvaluator:
    return PretrainEvaluator(predict_fn, batches, exp.to_device)
