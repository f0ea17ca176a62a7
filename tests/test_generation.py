"""Question generation (configs/edu/question_generation.py): the `edu_questions` dataset,
the Generator model, the generation task's loss and evaluator, and a runlocal run."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from test_train import read_metrics, train_losses

from mmjax.config import ConfigError
from mmjax.data import pipeline
from mmjax.data.builders.edu_grading.edu_grading import EduGrading
from mmjax.data.builders.edu_questions import questions
from mmjax.data.builders.edu_questions.edu_questions import EduQuestions, make_split
from mmjax.data.builders.edu_scenes import scenes as scenes_lib
from mmjax.data.tokenizer import TextEncoder, load_tokenizer
from mmjax.evaluate.metrics import bleu
from mmjax.tasks.generation import GenerationEvaluator, GenerationTask, words
from mmjax.train import loop

from conftest import load_config

CONFIG = "configs/edu/question_generation.py"


def generation_config(data_dir, arg="runlocal", **overrides):
  return load_config(CONFIG, arg, **{"data.data_dir": data_dir, **overrides})


@pytest.fixture(scope="module")
def dataset(data_dir):
  """The prepared `edu_questions` dataset."""
  return pipeline.open_dataset(ml_collections.ConfigDict(
      dict(name="edu_questions", data_dir=data_dir, cache=False)))


@pytest.fixture(scope="module")
def experiment(data_dir, dataset):
  """The runlocal experiment (preprocessor, model) and a batch of 8 training examples."""
  del dataset  # prepared
  exp = loop.build_experiment(generation_config(data_dir))
  source = exp.dataset.source("train")
  batch = exp.preprocessor.collate([exp.preprocessor.example(source[i]) for i in range(8)])
  return exp, batch


@pytest.fixture(scope="module")
def runlocal_workdir(data_dir, dataset, tmp_path_factory):
  del dataset  # prepared
  workdir = str(tmp_path_factory.mktemp("questions") / "run")
  loop.train(generation_config(data_dir), workdir)
  return workdir


# ------------------------------------------------------------------------------- the dataset


@pytest.mark.parametrize("scene, topic, question", [
    ("top left=red circle;bottom right=digit 7", "counting", "How many circles can you see?"),
    ("large:digit 3", "counting", "How many numbers are in the picture?"),
    ("top left=digit 1;top right=blue cross;bottom left=digit 2", "counting",
     "Count the numbers. How many are there?"),
    ("top right=digit 4;bottom left=green square", "colour",
     "What colour is the square in the bottom left?"),
    ("large:yellow triangle", "colour", "What colour is the big triangle?"),
    ("large:yellow triangle", "shape", "What is the name of the big shape?"),
    ("bottom right=cyan cross", "shape", "What shape is in the bottom right?"),
    ("top left=digit 0;top right=red circle;bottom right=blue square", "shape",
     "Which shape is drawn in the top right?"),
    ("top right=purple square", "position", "Where is the purple square?"),
    ("top left=red circle;bottom left=digit 9", "position", "Which corner is the number 9 in?"),
    ("top left=red circle;bottom left=digit 9", "digits",
     "Which number is written in the bottom left?"),
    ("large:digit 5", "digits", "Which number is written in the picture?"),
    ("top left=digit 7;top right=digit 3;bottom right=digit 8", "arithmetic",
     "What is 7 minus 3?"),
    ("top right=digit 2;bottom left=red circle;bottom right=digit 6", "arithmetic",
     "What is 2 plus 6?"),
    ("top left=digit 4;bottom right=digit 4", "arithmetic", "What is 4 minus 4?"),
])
def test_questions_are_the_documented_function_of_scene_and_topic(scene, topic, question):
  assert questions.make_question(scene, topic) == question


def test_topics_apply_only_where_the_scene_allows_them():
  assert questions.applicable_topics("large:digit 3") == ("counting", "digits")
  assert questions.applicable_topics("large:red circle") == ("counting", "colour", "shape")
  assert questions.applicable_topics("top left=digit 1;top right=digit 2") == (
      "counting", "position", "digits", "arithmetic")
  assert questions.applicable_topics("top left=red circle;bottom left=digit 9") == (
      "counting", "colour", "shape", "position", "digits")
  with pytest.raises(ValueError, match="does not apply"):
    questions.make_question("large:digit 3", "position")
  for bad in ("", "large:", "middle=red circle", "top left=pink circle", "large:digit 3;x=1"):
    with pytest.raises(ValueError, match="not a canonical scene"):
      questions.parse_scene(bad)


@pytest.fixture(scope="module")
def digit_data():
  return EduGrading.digit_images()


def test_same_seed_gives_identical_examples(digit_data):
  images, digits, splits = digit_data
  a, b, c = (make_split(300, splits["train"], images, digits, seed=s) for s in (1, 1, 2))
  np.testing.assert_array_equal(a["image"], b["image"])
  for key in ("topic", "question", "scene"):
    assert a[key] == b[key]
  np.testing.assert_array_equal(a["topic_id"], b["topic_id"])
  assert a["question"] != c["question"]


def test_every_topic_occurs_and_the_images_show_the_scene(digit_data):
  images, digits, splits = digit_data
  split = make_split(2000, splits["train"], images, digits, seed=5)
  counts = np.bincount(split["topic_id"], minlength=len(questions.TOPICS))
  assert (counts > 50).all(), counts
  for image, scene in zip(split["image"], split["scene"], strict=True):
    large, objects = questions.parse_scene(scene)
    cells = image.reshape(2, 8, 2, 8, 3).transpose(0, 2, 1, 3, 4).reshape(4, 8, 8, 3)
    lit = [bool(cell.any()) for cell in cells]
    if large:
      assert sum(lit) >= 2  # the object drawn x2 over the whole canvas
    else:
      filled = [scenes_lib.CELLS.index(o.cell) for o in objects]
      assert lit == [i in filled for i in range(4)], scene


def test_built_dataset_follows_the_documented_function(dataset):
  assert dataset.builder.version == "1.0.0"
  assert {name: split.num_examples for name, split in dataset.builder.info.splits.items()} == {
      name: spec.num_examples for name, spec in EduQuestions.SPLITS.items()}
  for split in ("validation", "test"):
    source = dataset.source(split)
    for i in range(0, len(source), 7):
      example = source[i]
      scene, topic = example["scene"].decode(), example["topic"].decode()
      assert example["question"].decode() == questions.make_question(scene, topic)
      assert example["topic_id"] == questions.TOPICS.index(topic)
      assert example["image"].shape == (16, 16, 3) and example["image"].dtype == np.uint8
  tokenizer = load_tokenizer(dataset.tokenizer_path)
  source = dataset.source("train")
  for i in range(0, 3000, 3):
    question = source[i]["question"].decode()
    ids = tokenizer(question)["input_ids"]
    assert tokenizer.unk_token_id not in ids and len(ids) <= 12
    assert tokenizer.decode(ids, skip_special_tokens=True) == question.lower()


# --------------------------------------------------------------------------------- the model


def test_batches_carry_the_target_with_bos_and_eos(experiment):
  exp, batch = experiment
  tokenizer = exp.preprocessor.target_encoder.tokenizer
  assert batch["target_ids"].shape == (8, 14) and batch["target_ids"].dtype == np.int32
  assert batch["text_ids"].shape == (8, 4)
  lengths = batch["target_mask"].sum(1)
  rows = np.arange(8)
  assert (batch["target_ids"][:, 0] == tokenizer.cls_token_id).all()
  assert (batch["target_ids"][rows, lengths - 1] == tokenizer.sep_token_id).all()
  assert (batch["target_ids"][~batch["target_mask"]] == tokenizer.pad_token_id).all()
  source = exp.dataset.source("train")
  description = batch["description"][3].tobytes().rstrip(b"\0").decode()
  assert description == source[3]["scene"].decode()


def test_the_decoder_is_causal(experiment):
  exp, batch = experiment
  model = exp.model
  params = loop.random_params(exp)
  # train=True: teacher forcing only (no decoding); the runlocal model has no dropout.
  apply = jax.jit(lambda p, b: model.apply({"params": p}, b, train=True))
  base = apply(params, batch)
  assert base["logits"].shape == (8, 13, exp.preprocessor.target_encoder.vocab_size)
  assert "generated" not in base
  rng = np.random.default_rng(0)
  for t in (2, 6, 11):
    changed = dict(batch)
    changed["target_ids"] = batch["target_ids"].copy()
    changed["target_ids"][:, t + 1:] = rng.integers(5, 60, (8, 13 - t))
    logits = apply(params, changed)["logits"]
    # The decoder reads target_ids[:, :13]: positions <= t are untouched, later ones move.
    np.testing.assert_allclose(logits[:, :t + 1], base["logits"][:, :t + 1], atol=1e-5)
    assert np.abs(logits[:, t + 1:] - base["logits"][:, t + 1:]).max() > 1e-3


@pytest.fixture(scope="module")
def overfit(experiment):
  """The runlocal model after 100 Adam steps on one batch of 8: (params, loss curve)."""
  exp, batch = experiment
  task, model = exp.task, exp.model
  tx = optax.adam(5e-3)

  @jax.jit
  def step(params, opt_state):
    def loss_fn(params):
      return task.loss(model.apply({"params": params}, batch, train=True), batch)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics

  params = loop.random_params(exp)
  opt_state = tx.init(params)
  curve = []
  for _ in range(100):
    params, opt_state, metrics = step(params, opt_state)
    curve.append((float(metrics["loss"]), float(metrics["token_accuracy"])))
  return params, curve


def test_loss_decreases_on_a_small_overfit_batch(overfit):
  _, curve = overfit
  (first, _), (last, accuracy) = curve[0], curve[-1]
  assert np.isfinite(first) and first > 3.0  # ~log(vocab) at the random init
  assert last < 0.1 * first, (first, last)
  assert accuracy == 1.0


@pytest.mark.parametrize("decoding", ["beam", "greedy"])
def test_generated_ids_decode_to_the_memorised_questions(experiment, overfit, decoding):
  exp, batch = experiment
  params, _ = overfit
  model = exp.model.clone(decoding=decoding)
  generated = jax.jit(lambda p, b: model.apply({"params": p}, b, method="generate"))(
      params, batch)
  evaluator = GenerationEvaluator(None, None, None, exp.preprocessor.target_encoder.tokenizer)
  texts = [evaluator.decode(ids) for ids in np.asarray(generated)]
  source = exp.dataset.source("train")
  assert texts == [source[i]["question"].decode().lower() for i in range(8)]
  # Every sequence ends with EOS, then padding.
  eos = exp.preprocessor.target_encoder.tokenizer.sep_token_id
  for ids in np.asarray(generated):
    end = list(ids).index(eos)
    assert (ids[end + 1:] == 0).all()


# ---------------------------------------------------------------------------- the evaluator


def test_evaluator_metrics_by_hand(experiment):
  """Half the examples generated right: exact match 0.5 overall, per topic as chosen."""
  exp, _ = experiment
  tokenizer = exp.preprocessor.target_encoder.tokenizer
  texts = ["How many circles can you see?", "What is 7 minus 3?",
           "Where is the red circle?", "What colour is the big square?"]
  wrong = ["How many squares can you see?", "What is 7 plus 3?",
           "Where is the red circle?", "What colour is the circle?"]
  right = [True, False, True, False]
  encode = TextEncoder(tokenizer, 14)
  targets = encode(texts)
  outputs = encode([t if ok else w for t, ok, w in zip(texts, right, wrong, strict=True)])
  batch = dict(target_ids=targets["text_ids"], target_mask=targets["text_mask"],
               topic_id=np.array([0, 5, 3, 1], np.int32),
               description=np.zeros((4, 8), np.uint8), example_mask=np.ones(4, bool))
  batch["description"][0, :3] = np.frombuffer(b"abc", np.uint8)

  def predict(params, device_batch):
    del params
    return {"generated": jnp.asarray(outputs["text_ids"][:, 1:]),
            "correct": jnp.array([3.0, 4.0, 5.0, 6.0]), "count": jnp.array([10.0] * 4)}

  evaluator = GenerationEvaluator(predict, lambda: [batch], lambda b: b, tokenizer,
                                  groups={"topic_id": questions.TOPICS}, num_examples=3,
                                  description_name="scene")
  result = dict(evaluator.run(None))
  assert result["exact_match"] == 0.5
  assert result["token_accuracy"] == pytest.approx(18 / 40)
  assert result["num_examples"] == 4
  assert result["exact_match/counting"] == 1.0 and result["exact_match/arithmetic"] == 0.0
  assert result["exact_match/position"] == 1.0 and result["exact_match/colour"] == 0.0
  assert "exact_match/shape" not in result  # no example of that topic
  hyps = [words(t.lower()) for t in (texts[0], wrong[1], texts[2], wrong[3])]
  assert result["bleu4"] == pytest.approx(bleu([words(t.lower()) for t in texts], hyps))
  assert 0.3 < result["bleu4"] < 1.0
  assert result["examples"] == [
      dict(scene="abc", reference="how many circles can you see?",
           generated="how many circles can you see?"),
      dict(scene="", reference="what is 7 minus 3?", generated="what is 7 plus 3?"),
      dict(scene="", reference="where is the red circle?", generated="where is the red circle?"),
  ]


def test_config_errors(data_dir, dataset):
  del dataset  # prepared
  bad = generation_config(data_dir)
  del bad.data.fields["target"]
  with pytest.raises(ConfigError, match="config.data.fields.target"):
    loop.build_experiment(bad)
  bad = generation_config(data_dir, **{"data.fields.description": "caption"})
  with pytest.raises(ConfigError, match="config.data.fields.description: .* no feature 'caption'"):
    loop.build_experiment(bad)
  with pytest.raises(ConfigError, match="config.task.decoding: unknown 'sample'"):
    loop.build_experiment(generation_config(data_dir, **{"task.decoding": "sample"}))
  with pytest.raises(ConfigError, match="config.task.beam_size"):
    GenerationTask(beam_size=0)
  with pytest.raises(ConfigError, match="config.input.max_target_len"):
    loop.build_experiment(generation_config(data_dir, **{"input.max_target_len": 1}))
  bad = generation_config(data_dir)
  del bad.model.decoder
  with pytest.raises(ConfigError, match="config.model.decoder: the generation task needs"):
    loop.build_experiment(bad)


# ---------------------------------------------------------------------------- a runlocal run


def test_runlocal_writes_bleu_exact_match_and_examples(runlocal_workdir):
  losses = [loss for _, loss in train_losses(runlocal_workdir)]
  assert len(losses) == 4 and all(np.isfinite(losses))
  assert losses[-1] < 0.6 * losses[0], losses
  with open(os.path.join(runlocal_workdir, "eval.json")) as f:
    written = json.load(f)
  assert written["step"] == 40
  for split in ("validation", "test"):
    metrics = written[split]
    assert metrics["num_examples"] == 1000
    assert 0.0 <= metrics["exact_match"] <= 1.0 and 0.0 < metrics["bleu4"] <= 1.0
    assert metrics["token_accuracy"] > 0.5
    assert {f"exact_match/{topic}" for topic in questions.TOPICS} <= set(metrics)
    examples = metrics["examples"]
    assert len(examples) == 10
    for example in examples:
      assert set(example) == {"scene", "topic", "reference", "generated"}
      assert example["topic"] in questions.TOPICS
      assert example["reference"] == questions.make_question(example["scene"],
                                                             example["topic"]).lower()
      assert isinstance(example["generated"], str)
  # Only scalars reach metrics.jsonl: the examples stay in eval.json.
  final = read_metrics(runlocal_workdir)[-1]
  assert "test/bleu4" in final and "test/exact_match/counting" in final
  assert "test/examples" not in final and "validation/examples" not in final
