"""ScienceQA: the builder on a fixture in the official format, its errors, the paper's
accuracy breakdown, the multiple-choice model and task, and a runlocal training run."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from fixtures.scienceqa_fixture import COLOURS, write_fixture

from mmjax.config import ConfigError
from mmjax.data import pipeline
from mmjax.data.tokenizer import TextEncoder, load_tokenizer
from mmjax.evaluate import scienceqa
from mmjax.models.model import ABSENT_CHOICE, build_model, head_specs
from mmjax.tasks import build_task
from mmjax.tasks.multiple_choice import (
  ChoicePreprocessor,
  MultipleChoiceEvaluator,
  MultipleChoiceTask,
)
from mmjax.train import loop

from conftest import load_config


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory) -> str:
  directory = str(tmp_path_factory.mktemp("scienceqa") / "data")
  write_fixture(directory)
  return directory


def open_scienceqa(data_dir, manual_dir):
  return pipeline.open_dataset(ml_collections.ConfigDict(
      dict(name="scienceqa", data_dir=data_dir, manual_dir=manual_dir, cache=False)))


@pytest.fixture(scope="module")
def dataset(data_dir, fixture_dir):
  return open_scienceqa(data_dir, fixture_dir)


def read_json(directory, name):
  with open(os.path.join(directory, name)) as f:
    return json.load(f)


def test_builder_reads_the_official_layout(dataset, fixture_dir):
  problems = read_json(fixture_dir, "problems.json")
  pid_splits = read_json(fixture_dir, "pid_splits.json")
  assert {split: len(dataset.source(split)) for split in ("train", "validation", "test")} == \
      {"train": 72, "validation": 24, "test": 24}
  features = dataset.builder.info.features
  assert features["subject"].names == ["natural science", "social science", "language science"]
  for split, key in (("train", "train"), ("validation", "val"), ("test", "test")):
    source = dataset.source(split)
    for index, pid in enumerate(pid_splits[key]):
      example, problem = source[index], problems[pid]
      assert example["pid"].decode() == pid
      assert example["question"].decode() == problem["question"]
      assert example["context"].decode() == problem["hint"]
      assert example["choices"].decode().split("\n") == problem["choices"]
      assert example["answer"] == problem["answer"]
      assert features["subject"].names[example["subject"]] == problem["subject"]
      assert example["grade"] == int(problem["grade"][5:])
      assert example["has_context"] == int(problem["hint"] != "")
      assert example["has_image"] == int(problem["image"] is not None)
      assert example["image"].shape == (64, 64, 3) and example["image"].dtype == np.uint8
      if problem["image"] is None:
        assert not example["image"].any()  # black
      else:
        # The shape is centred near (8, 8) of 16x16, i.e. (32, 32) of 64x64: its colour.
        colour = problem["choices"][problem["answer"]]
        np.testing.assert_allclose(example["image"][32, 32], COLOURS[colour], atol=2)
        # Transparent backgrounds ("look" problems) are composed over white.
        np.testing.assert_array_equal(example["image"][0, 0], [255, 255, 255])
  # Every ScienceQA group is present in the test split.
  test = [dataset.source("test")[i] for i in range(24)]
  assert {e["subject"] for e in test} == {0, 1, 2}
  assert {(e["has_context"], e["has_image"]) for e in test} == {(0, 1), (1, 1), (1, 0), (0, 0)}
  assert min(e["grade"] for e in test) <= 6 < max(e["grade"] for e in test)
  # The vocabulary covers the text: no [UNK] in any test question, hint or choice.
  tokenizer = load_tokenizer(dataset.tokenizer_path)
  for e in test:
    for text in (e["question"], e["context"], e["choices"]):
      assert tokenizer.unk_token_id not in tokenizer(text.decode())["input_ids"]


def test_release_layout_with_split_folders_gives_the_same_data(data_dir, dataset, tmp_path):
  nested = str(tmp_path / "nested")
  write_fixture(nested, nested=True)
  assert os.path.isfile(os.path.join(nested, "images", "train", "1", "image.png"))
  other = open_scienceqa(data_dir, nested)
  # Another directory is another build (its own tfds config), with the same contents.
  assert other.builder.data_dir != dataset.builder.data_dir
  for split in ("train", "test"):
    for index in range(len(dataset.source(split))):
      a, b = dataset.source(split)[index], other.source(split)[index]
      assert a["pid"] == b["pid"]
      np.testing.assert_array_equal(a["image"], b["image"])


def test_a_changed_problems_file_builds_afresh(data_dir, tmp_path):
  directory = str(tmp_path / "edited")
  write_fixture(directory, num_problems=40)
  before = open_scienceqa(data_dir, directory)
  problems = read_json(directory, "problems.json")
  problems["1"]["question"] = "Which colour does the picture show?"
  with open(os.path.join(directory, "problems.json"), "w") as f:
    json.dump(problems, f)
  after = open_scienceqa(data_dir, directory)
  assert after.builder.data_dir != before.builder.data_dir
  assert after.source("train")[0]["question"] == b"Which colour does the picture show?"


def edited_fixture(tmp_path, edit):
  directory = str(tmp_path / "bad")
  write_fixture(directory, num_problems=20)
  edit(directory)
  return directory


def test_errors_name_the_setting_file_pid_and_field(data_dir, tmp_path):
  with pytest.raises(ConfigError, match=r"config\.data\.manual_dir: not set"):
    open_scienceqa(data_dir, None)

  def remove_splits(directory):
    os.remove(os.path.join(directory, "pid_splits.json"))

  with pytest.raises(ConfigError, match=r"no pid_splits\.json in"):
    open_scienceqa(data_dir, edited_fixture(tmp_path / "a", remove_splits))

  def remove_image(directory):
    shutil.rmtree(os.path.join(directory, "images", "2"))

  with pytest.raises(ConfigError, match=r"problem '2' names image 'image\.png', but neither "
                     r".*images/2/image\.png nor .*images/train/2/image\.png exists"):
    open_scienceqa(data_dir, edited_fixture(tmp_path / "b", remove_image))

  def drop_field(directory):
    problems = read_json(directory, "problems.json")
    del problems["3"]["hint"]
    with open(os.path.join(directory, "problems.json"), "w") as f:
      json.dump(problems, f)

  with pytest.raises(ConfigError, match=r"problems\.json: problem '3' lacks field 'hint'"):
    open_scienceqa(data_dir, edited_fixture(tmp_path / "c", drop_field))

  def bad_answer(directory):
    problems = read_json(directory, "problems.json")
    problems["4"]["answer"] = len(problems["4"]["choices"])
    with open(os.path.join(directory, "problems.json"), "w") as f:
      json.dump(problems, f)

  with pytest.raises(ConfigError, match=r"problem '4', field 'answer': expected an index"):
    open_scienceqa(data_dir, edited_fixture(tmp_path / "d", bad_answer))

  def unknown_pid(directory):
    splits = read_json(directory, "pid_splits.json")
    splits["test"].append("999")
    with open(os.path.join(directory, "pid_splits.json"), "w") as f:
      json.dump(splits, f)

  with pytest.raises(ConfigError, match=r"'test' lists pid '999', which problems\.json lacks"):
    open_scienceqa(data_dir, edited_fixture(tmp_path / "e", unknown_pid))


# Eight questions: subject (0 NAT, 1 SOC, 2 LAN), grade, text and image context, correct.
SUBJECT = np.array([0, 0, 0, 1, 1, 2, 2, 2])
GRADE = np.array([1, 3, 8, 6, 12, 2, 7, 9])
TEXT = np.array([1, 0, 0, 1, 1, 0, 0, 1])
IMAGE = np.array([1, 1, 0, 0, 1, 0, 0, 0])
CORRECT = np.array([True, False, True, True, False, True, True, False])
NAMES = ("natural science", "social science", "language science")


def test_breakdown_matches_hand_counts():
  got = scienceqa.breakdown(CORRECT, SUBJECT, GRADE, TEXT, IMAGE, NAMES)
  assert got == pytest.approx({
      "NAT": 2 / 3, "SOC": 1 / 2, "LAN": 2 / 3,
      "TXT": 2 / 4,           # questions 0, 3, 4, 7
      "IMG": 1 / 3,           # questions 0, 1, 4
      "NO": 3 / 3,            # questions 2, 5, 6
      "G1-6": 3 / 4,          # grades 1, 3, 6, 2
      "G7-12": 2 / 4,         # grades 8, 12, 7, 9
      "Avg": 5 / 8})
  assert list(got) == list(scienceqa.COLUMNS)
  # Subject ids follow the class names given, whatever their order.
  swapped = scienceqa.breakdown(CORRECT, 1 - np.minimum(SUBJECT, 1) + (SUBJECT == 2) * 2,
                                GRADE, TEXT, IMAGE, ("social science", "natural science",
                                                     "language science"))
  assert swapped["NAT"] == pytest.approx(2 / 3) and swapped["SOC"] == pytest.approx(1 / 2)
  # A group with no question is left out, and printed as "-".
  only_text = scienceqa.breakdown(CORRECT[TEXT == 1], SUBJECT[TEXT == 1], GRADE[TEXT == 1],
                                  TEXT[TEXT == 1], IMAGE[TEXT == 1], NAMES)
  assert "NO" not in only_text and only_text["TXT"] == pytest.approx(0.5)
  table = scienceqa.format_breakdown(
      {"test": {f"accuracy/{k}": v for k, v in got.items()} | {"num_examples": 8},
       "validation": {f"accuracy/{k}": v for k, v in only_text.items()},
       "zeroshot": {"accuracy": 0.5}})
  lines = table.splitlines()
  assert lines[1].split() == ["split", *scienceqa.COLUMNS, "N"]
  assert lines[2].split() == ["test", "66.67", "50.00", "66.67", "50.00", "33.33", "100.00",
                              "75.00", "50.00", "62.50", "8"]
  assert lines[3].split()[6] == "-"  # validation has no NO question
  assert len(lines) == 4  # zeroshot has no breakdown
  assert scienceqa.format_breakdown({"test": {"accuracy": 1.0}}) == ""


def test_evaluator_reports_the_breakdown_from_predictions():
  labels = np.array([0, 1, 2, 0, 1, 0, 1, 3])
  predictions = np.where(CORRECT, labels, (labels + 1) % 4)
  evaluator = MultipleChoiceEvaluator(None, None, None, {"label": 5}, "label",
                                      subject_names=NAMES)
  assert set(evaluator.groups) == set(scienceqa.FEATURES)  # collected from the batches
  metrics = dict(evaluator.metrics({
      "label": {"label": labels, "prediction": predictions,
                "probabilities": np.eye(5)[predictions]},
      "groups": {"subject": SUBJECT, "grade": GRADE, "has_context": TEXT,
                 "has_image": IMAGE}}))
  assert metrics["accuracy"] == pytest.approx(5 / 8) == metrics["accuracy/Avg"]
  assert metrics["accuracy/NAT"] == pytest.approx(2 / 3)
  assert metrics["accuracy/IMG"] == pytest.approx(1 / 3)
  assert metrics["accuracy/G7-12"] == pytest.approx(1 / 2)
  assert metrics["num_examples"] == 8
  assert not any(key.startswith("accuracy/natural") for key in metrics)


def model_config():
  return ml_collections.ConfigDict(dict(
      modalities="image,text", dtype="float32", param_dtype="float32", dropout_rate=0.0,
      image=dict(variant="nano/4"), text=dict(variant="nano", max_len=10),
      fusion=dict(kind="cross_attention", depth=1, width=32, num_heads=2, mlp_dim=64),
      heads=dict(label=dict(input="fused", pooling="cls"))))


def choice_batch(size=3, choices=4, length=10, seed=0):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(3, length, (size, choices))
  mask = np.arange(length) < lengths[..., None]
  return {"image": rng.uniform(-1, 1, (size, 8, 8, 3)).astype(np.float32),
          "text_ids": np.where(mask, rng.integers(5, 50, (size, choices, length)), 0
                               ).astype(np.int32),
          "text_mask": mask,
          "choice_mask": np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], bool)}


@pytest.fixture(scope="module")
def choice_model():
  config = model_config()
  model = build_model(config, modalities=("image", "text"), vocab_size=50,
                      heads=head_specs(config, ("image", "text"), lambda name: 1))
  params = model.init({"params": jax.random.key(0)}, choice_batch())["params"]
  # The head starts at zero (every choice equal); give it weights so choices differ.
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: jax.random.normal(jax.random.key(1), x.shape) if "heads" in str(path)
      else x, params)
  return model, params


def test_padded_choices_get_zero_probability_and_do_not_matter(choice_model):
  model, params = choice_model
  batch = choice_batch()
  logits = model.apply({"params": params}, batch)["label"]
  assert logits.shape == (3, 4)
  np.testing.assert_array_equal(logits[~batch["choice_mask"]], ABSENT_CHOICE)
  task = MultipleChoiceTask({"label": 4}, {"label": 1.0})
  probabilities = np.asarray(task.predict({"label": logits})["label"]["probabilities"])
  np.testing.assert_array_equal(probabilities[~batch["choice_mask"]], 0.0)
  np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-6)
  assert np.ptp(np.asarray(logits)[0]) > 1e-3  # real choices are scored differently
  # Whatever padded choices hold, real choices' logits are unchanged.
  other = dict(batch, text_ids=np.where(batch["choice_mask"][..., None], batch["text_ids"], 7))
  np.testing.assert_allclose(model.apply({"params": params}, other)["label"], logits,
                             atol=1e-6)


def test_permuting_choices_permutes_logits(choice_model):
  model, params = choice_model
  batch = choice_batch()
  batch["choice_mask"][:] = True
  logits = np.asarray(model.apply({"params": params}, batch)["label"])
  order = np.array([2, 0, 3, 1])
  permuted = dict(batch, text_ids=batch["text_ids"][:, order],
                  text_mask=batch["text_mask"][:, order])
  np.testing.assert_allclose(model.apply({"params": params}, permuted)["label"],
                             logits[:, order], atol=1e-5)


def test_choice_scores_equal_the_flat_model_on_repeated_inputs(choice_model):
  """Repeating the image tower's tokens K times equals repeating its inputs."""
  model, params = choice_model
  batch = choice_batch()
  batch["choice_mask"][:] = True
  logits = model.apply({"params": params}, batch)["label"]
  flat = {"image": np.repeat(batch["image"], 4, axis=0),
          "text_ids": batch["text_ids"].reshape(12, -1),
          "text_mask": batch["text_mask"].reshape(12, -1)}
  np.testing.assert_allclose(model.apply({"params": params}, flat)["label"].reshape(3, 4),
                             logits, atol=1e-5)


def test_loss_softmaxes_over_real_choices_only():
  logits = jnp.array([[1.0, 2.0, ABSENT_CHOICE, ABSENT_CHOICE], [0.0, 0.0, 0.0, 3.0]])
  batch = {"label": jnp.array([1, 3]), "example_mask": jnp.array([True, True])}
  task = MultipleChoiceTask({"label": 4}, {"label": 1.0})
  loss, metrics = task.loss({"label": logits}, batch)
  expected = (np.log1p(np.exp(-1.0)) + (np.log(3 + np.exp(3.0)) - 3.0)) / 2
  assert float(loss) == pytest.approx(expected, rel=1e-6)
  assert float(metrics["accuracy"]) == 1.0
  # Label smoothing spreads over the real choices: 0.1 to each of row 0's two choices.
  smooth = MultipleChoiceTask({"label": 4}, {"label": 1.0}, label_smoothing=0.2)
  first = smooth.loss({"label": logits[:1]}, {"label": batch["label"][:1],
                                               "example_mask": batch["example_mask"][:1]})[0]
  log_p = np.log(np.exp([1.0, 2.0]) / np.exp([1.0, 2.0]).sum())
  assert float(first) == pytest.approx(-(0.1 * log_p[0] + 0.9 * log_p[1]), rel=1e-5)


def test_preprocessor_pairs_each_choice_with_question_and_context(dataset):
  preprocessor = ChoicePreprocessor(
      {"question": "question", "context": "context", "choices": "choices", "label": "answer",
       "image": "image", "has_image": "has_image"},
      TextEncoder(load_tokenizer(dataset.tokenizer_path), 24), max_choices=5)
  source = dataset.source("train")
  examples = [preprocessor.example(source[i]) for i in range(4)]
  batch = preprocessor.collate(examples)
  assert batch["text_ids"].shape == (4, 5, 24) and batch["text_ids"].dtype == np.int32
  assert batch["text_mask"].shape == (4, 5, 24) and batch["text_mask"].dtype == bool
  assert batch["image"].shape == (4, 64, 64, 3)
  counts = [len(source[i]["choices"].decode().split("\n")) for i in range(4)]
  np.testing.assert_array_equal(batch["choice_mask"].sum(1), counts)
  np.testing.assert_array_equal(batch["label"], [source[i]["answer"] for i in range(4)])
  # Row (2, 1): "[CLS] question hint [SEP] choice 1 [SEP]" of the third problem (a city
  # question, which has a hint).
  tokenizer = preprocessor.text_encoder.tokenizer
  city = source[2]
  assert city["context"]
  expected = tokenizer(f"{city['question'].decode()} {city['context'].decode()}",
                       city["choices"].decode().split("\n")[1])["input_ids"]
  assert batch["text_ids"][2, 1][batch["text_mask"][2, 1]].tolist() == expected
  assert tokenizer.convert_ids_to_tokens(expected).count("[SEP]") == 2
  assert set(preprocessor.batch_keys) == set(batch)
  too_few = ChoicePreprocessor({"question": "question", "choices": "choices",
                                "label": "answer"}, preprocessor.text_encoder, max_choices=2)
  many = next(source[i] for i in range(len(source))
              if len(source[i]["choices"].decode().split("\n")) > 2)
  with pytest.raises(ConfigError, match=r"config\.task\.max_choices=2: an example has [34]"):
    too_few.example(many)


def test_task_config_errors():
  def config(**task):
    return ml_collections.ConfigDict(dict(
        model=dict(heads=dict(label=dict(input="fused", pooling="cls"),
                              aux=dict(input="text", pooling="cls"))),
        losses=dict(label=1.0), task=dict(name="multiple_choice", **task)))

  task = build_task(config(max_choices=4), lambda head: pytest.fail("not a class label"))
  assert isinstance(task, MultipleChoiceTask) and task.num_classes == {"label": 4}
  with pytest.raises(ConfigError, match=r"config\.task\.max_choices: expected an integer"):
    build_task(config(max_choices=1), None)
  with pytest.raises(ConfigError, match=r"config\.task\.breakdown: unknown 'sqa'"):
    build_task(config(breakdown="sqa"), None)
  two = config()
  two.losses.aux = 0.5
  with pytest.raises(ConfigError, match=r"config\.losses: the multiple_choice task trains one"):
    build_task(two, None)


def test_runlocal_trains_and_reports_the_breakdown(data_dir, fixture_dir, tmp_path):
  config = load_config("configs/edu/scienceqa.py", "runlocal",
                       **{"data.data_dir": data_dir, "data.manual_dir": fixture_dir})
  workdir = str(tmp_path / "run")
  results = loop.train(config, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    losses = [r["train/loss"] for r in map(json.loads, f) if "train/loss" in r]
  assert len(losses) == 4 and all(np.isfinite(losses))
  assert losses[-1] < 0.8 * losses[0], losses  # 1.09 -> 0.53 when measured
  with open(os.path.join(workdir, "eval.json")) as f:
    written = json.load(f)
  for split in ("validation", "test"):
    metrics = written[split]
    assert metrics["num_examples"] == 24
    for column in scienceqa.COLUMNS:
      assert 0.0 <= metrics[f"accuracy/{column}"] <= 1.0
    assert metrics["accuracy/Avg"] == pytest.approx(metrics["accuracy"])
    assert np.sum(metrics["confusion_matrix"]) == 24
  table = scienceqa.format_breakdown(results)
  assert table.splitlines()[2].split()[0] == "validation"
  assert f"{100 * written['test']['accuracy/Avg']:.2f}" in table.splitlines()[3]
