"""Conditional text generation: from an image (and optionally a text, e.g. a topic), write
a text (e.g. the question a teacher asks about the picture on that topic).

Model: mmjax/models/generator.py (towers, fusion, causal decoder cross-attending to the
fused tokens). Loss: next-token cross-entropy with teacher forcing over the target's
tokens, EOS included (`label_smoothing` applies). Evaluation decodes every example of the
split (`decoding` "beam" with `beam_size` and `length_penalty`, or "greedy") and reports

  bleu4            corpus BLEU-4 of the generated texts against the targets;
  exact_match      the fraction generated exactly (same words, after the tokenizer's
                   lower-casing), and `exact_match/<class>` per class of each
                   `config.evals.group_by` feature (e.g. per topic);
  token_accuracy   next-token accuracy under teacher forcing;
  examples         the first `num_examples` examples: their description (e.g. the scene),
                   input text, reference and generated text (a list; not a scalar metric).

Words for both metrics are the decoded text's words and punctuation marks ("how many
circles can you see?" -> how, many, circles, can, you, see, ?).

`config.data.fields` roles: `image` (and `text`) as inputs, `target` the text to write,
optionally `description`, a text feature shown with the examples. Batches carry
`target_ids` int32 [B, T] ([CLS] = BOS, the target, [SEP] = EOS, [PAD] after; T =
`config.input.max_target_len`), `target_mask` bool [B, T], and with `description` its
UTF-8 bytes `description` uint8 [B, DESCRIPTION_BYTES] (so the texts shown travel with the
outputs, in evaluation order, whatever the number of processes).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmjax.config import ConfigError
from mmjax.data import pipeline
from mmjax.data.tokenizer import TextEncoder
from mmjax.evaluate import metrics
from mmjax.evaluate.evaluators import concatenate, real_outputs
from mmjax.models.generator import DECODINGS, Generator, build_generator
from mmjax.models.model import pretrained_sources
from mmjax.objectives import losses
from mmjax.tasks.classification import group_features

DESCRIPTION_BYTES = 128
_WORDS = re.compile(r"\w+|[^\w\s]")  # words and punctuation marks, as BERT pre-tokenizes


@dataclasses.dataclass(frozen=True)
class GenerationTask:
  """Teacher-forced next-token cross-entropy; evaluation by decoding (module docstring)."""

  label_smoothing: float = 0.0
  decoding: str = "beam"        # "beam" or "greedy"
  beam_size: int = 4
  length_penalty: float = 0.0   # GNMT alpha; 0 ranks beams by total log-probability
  num_examples: int = 10        # examples written into the evaluation results

  def __post_init__(self):
    if self.decoding not in DECODINGS:
      raise ConfigError(f"config.task.decoding: unknown '{self.decoding}'; expected one of "
                        f"{', '.join(DECODINGS)}")
    for name in ("beam_size", "num_examples"):
      value, least = getattr(self, name), 1 if name == "beam_size" else 0
      if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"config.task.{name}: expected an integer >= {least}, got {value!r}")

  def loss(self, outputs: dict[str, jax.Array], batch: dict[str, jax.Array]
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    del batch  # the model's targets and weights already hold the batch's target and mask
    loss, accuracy = losses.token_cross_entropy(outputs["logits"], outputs["targets"],
                                                outputs["weights"],
                                                label_smoothing=self.label_smoothing)
    return loss, {"loss": loss, "token_accuracy": accuracy}

  def predict(self, outputs: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Per example: `generated` ids [B, L], and `correct` / `count` [B], its target
    tokens predicted right under teacher forcing / its target tokens."""
    weights = outputs["weights"]
    hit = jnp.argmax(outputs["logits"], -1) == outputs["targets"]
    return {"generated": outputs["generated"], "correct": (hit * weights).sum(-1),
            "count": weights.sum(-1)}

  def build(self, config: ml_collections.ConfigDict, dataset: pipeline.Dataset,
            modalities: tuple[str, ...], finetune: Any
            ) -> tuple[GenerationPreprocessor, Generator]:
    """(GenerationPreprocessor, Generator of `config.model`)."""
    preprocessor = make_generation_preprocessor(dataset, config, modalities,
                                                tuple(group_features(config, dataset)))
    tokenizer = preprocessor.target_encoder.tokenizer
    model = build_generator(
        config.model, modalities=modalities,
        text_vocab_size=preprocessor.text_encoder.vocab_size if preprocessor.text_encoder
        else None,
        target_vocab_size=preprocessor.target_encoder.vocab_size,
        max_target_len=config.input.get("max_target_len", None),
        bos_id=tokenizer.cls_token_id, eos_id=tokenizer.sep_token_id,
        pad_id=tokenizer.pad_token_id, decoding=self.decoding, beam_size=self.beam_size,
        length_penalty=self.length_penalty, adapter_dim=finetune.model_adapter_dim,
        init_from=pretrained_sources(config))
    return preprocessor, model

  def evaluator(self, exp: Any, predict_fn: Any, batches: Any) -> GenerationEvaluator:
    fields = exp.config.data.fields
    preprocessor = exp.preprocessor
    return GenerationEvaluator(
        predict_fn, batches, exp.to_device, preprocessor.target_encoder.tokenizer,
        groups=group_features(exp.config, exp.dataset), num_examples=self.num_examples,
        text_name=fields["text"] if preprocessor.text_encoder else None,
        description_name=fields["description"] if preprocessor.describes else None)


class GenerationPreprocessor(pipeline.Preprocessor):
  """pipeline.Preprocessor's inputs and int features, plus the target text as
  `target_ids` / `target_mask` and the optional description as `description` bytes (see
  the module docstring)."""

  def __init__(self, fields: dict[str, str], text_encoder: TextEncoder | None,
               target_encoder: TextEncoder, *, target_field: str,
               description_field: str | None = None,
               image_size: Sequence[int] | None = None, image_channels: int | None = None):
    super().__init__(fields, text_encoder, image_size=image_size,
                     image_channels=image_channels)
    self.target_encoder = target_encoder
    self.target_field = target_field
    self.description_field = description_field

  @property
  def describes(self) -> bool:
    return self.description_field is not None

  @property
  def batch_keys(self) -> tuple[str, ...]:
    return (("target_ids", "target_mask") + (("description",) if self.describes else ())
            + super().batch_keys)

  def example(self, raw: dict) -> dict:
    out = super().example(raw)
    out["target"] = as_text(raw[self.target_field])
    if self.describes:
      encoded = as_text(raw[self.description_field]).encode("utf-8")[:DESCRIPTION_BYTES]
      out["description"] = np.frombuffer(encoded.ljust(DESCRIPTION_BYTES, b"\0"), np.uint8)
    return out

  def collate(self, examples: Sequence[dict]) -> dict[str, np.ndarray]:
    batch = super().collate(examples)
    encoded = self.target_encoder([e["target"] for e in examples])
    batch["target_ids"], batch["target_mask"] = encoded["text_ids"], encoded["text_mask"]
    if self.describes:
      batch["description"] = np.stack([e["description"] for e in examples])
    return batch


def as_text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def make_generation_preprocessor(dataset: pipeline.Dataset, config: ml_collections.ConfigDict,
                                 modalities: Sequence[str], features: Sequence[str]
                                 ) -> GenerationPreprocessor:
  """The GenerationPreprocessor of `config.data.fields` (the modalities' inputs, `target`,
  optional `description`) and the int `features`. The target is tokenized with the text
  input's tokenizer, or without a text input the dataset's (`config.input.tokenizer`
  when set), to `config.input.max_target_len` tokens."""
  inputs = pipeline.make_preprocessor(dataset, config, modalities, (), features)
  known = dataset.builder.info.features
  roles = {"target": True, "description": False}  # role -> required
  for role, required in roles.items():
    if role not in config.data.fields:
      if required:
        raise ConfigError(f"config.data.fields.target: the generation task needs the text "
                          f"feature to write; dataset '{dataset.name}' has {', '.join(known)}")
      continue
    if config.data.fields[role] not in known:
      raise ConfigError(f"config.data.fields.{role}: dataset '{dataset.name}' has no feature "
                        f"'{config.data.fields[role]}'; it has {', '.join(known)}")
  tokenizer = (inputs.text_encoder.tokenizer if inputs.text_encoder
               else pipeline.make_text_encoder(dataset, config).tokenizer)
  return GenerationPreprocessor(
      inputs.fields, inputs.text_encoder,
      TextEncoder(tokenizer, config.input.get("max_target_len", None),
                  field="config.input.max_target_len"),
      target_field=config.data.fields["target"],
      description_field=config.data.fields.get("description", None),
      **inputs.image_options)


class GenerationEvaluator:
  """Decodes every example of one split; BLEU-4, exact match (overall and per group),
  teacher-forced token accuracy and the first `num_examples` examples (module docstring).

  `groups` = {batch key: class names} (`classification.group_features`); `text_name`,
  `description_name`: the example fields under which the decoded input text and the
  description are shown (None: not shown).
  """

  def __init__(self, predict_fn: Callable[[Any, dict], dict], batches: Callable[[], Iterable],
               to_device: Callable[[dict], dict], tokenizer: Any, *,
               groups: dict[str, tuple[str, ...]] | None = None, num_examples: int = 10,
               text_name: str | None = None, description_name: str | None = None):
    self.predict_fn = predict_fn
    self.batches = batches
    self.to_device = to_device
    self.tokenizer = tokenizer
    self.groups = dict(groups or {})
    self.num_examples = num_examples
    self.text_name = text_name
    self.description_name = description_name

  def decode(self, ids: np.ndarray) -> str:
    """Token ids (BOS first or not) -> text, up to the first EOS, special tokens dropped."""
    ids = np.asarray(ids).tolist()
    eos = self.tokenizer.sep_token_id
    if eos in ids:
      ids = ids[:ids.index(eos)]
    return self.tokenizer.decode(ids, skip_special_tokens=True)

  def run(self, params: Any) -> Iterator[tuple[str, Any]]:
    keys = ["target_ids", *self.groups] + (["text_ids"] if self.text_name else []) + (
        ["description"] if self.description_name else [])
    rows = concatenate([dict(batch, **outputs) for batch, outputs in real_outputs(
        self.predict_fn, params, self.batches(), self.to_device, keys)])
    generated = [self.decode(ids) for ids in rows["generated"]]
    references = [self.decode(ids) for ids in rows["target_ids"]]
    hypotheses = [words(text) for text in generated]
    targets = [words(text) for text in references]
    yield "bleu4", metrics.bleu(targets, hypotheses, max_n=4)
    yield "exact_match", metrics.exact_match(targets, hypotheses)
    yield "token_accuracy", float(rows["correct"].sum() / max(rows["count"].sum(), 1))
    yield "num_examples", len(generated)
    for key, names in self.groups.items():
      for index, name in enumerate(names):
        chosen = np.flatnonzero(rows[key] == index)
        if len(chosen):
          yield f"exact_match/{name}", metrics.exact_match(
              [targets[i] for i in chosen], [hypotheses[i] for i in chosen])
    examples = []
    for i in range(min(self.num_examples, len(generated))):
      example = {}
      if self.description_name:
        example[self.description_name] = (
            rows["description"][i].tobytes().rstrip(b"\0").decode("utf-8", errors="replace"))
      if self.text_name:
        example[self.text_name] = self.decode(rows["text_ids"][i])
      example.update(reference=references[i], generated=generated[i])
      examples.append(example)
    yield "examples", examples


def words(text: str) -> list[str]:
  """"how many circles?" -> ["how", "many", "circles", "?"]."""
  return _WORDS.findall(text)
