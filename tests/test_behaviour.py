"""edu_behaviour: cue rates, renderings that carry their cue, the Bayes analysis, the built
dataset and a runlocal training run over all three modalities."""

import json
import os
import re

import jax
import numpy as np
import pytest

from mmjax.config import ConfigError
from mmjax.data.builders.edu_behaviour import behaviour as lib
from mmjax.data.builders.edu_behaviour.edu_behaviour import EduBehaviour
from mmjax.data.tokenizer import load_tokenizer
from mmjax.train import loop

from conftest import load_config

ENGAGED, STRUGGLING, DISENGAGED = range(3)


@pytest.fixture(scope="module")
def split():
  """1,200 generated examples (300 of each cue per modality is not guaranteed; ~300)."""
  return lib.make_split(1200, seed=3)


@pytest.fixture(scope="module")
def behaviour(data_dir):
  """The prepared `edu_behaviour` dataset."""
  import ml_collections

  from mmjax.data import pipeline

  return pipeline.open_dataset(ml_collections.ConfigDict(
      dict(name="edu_behaviour", data_dir=data_dir, cache=False)))


def test_same_seed_gives_identical_examples(split):
  again, other = lib.make_split(1200, seed=3), lib.make_split(1200, seed=4)
  assert split["image"].shape == (1200, 16, 16, 1) and split["image"].dtype == np.uint8
  assert split["audio"].shape == (1200, 4000) and split["audio"].dtype == np.int16
  assert len(split["reflection"]) == 1200
  for key in ("image", "audio", "label", "image_cue", "text_cue", "audio_cue", "example_id"):
    np.testing.assert_array_equal(split[key], again[key])
    assert not np.array_equal(split[key], other[key]) or key == "example_id"
  assert split["reflection"] == again["reflection"] != other["reflection"]
  np.testing.assert_array_equal(np.bincount(split["label"]), [400, 400, 400])


@pytest.mark.parametrize("modality", lib.MODALITIES)
def test_cues_agree_with_the_label_at_the_designed_rates(modality):
  rates = lib.RATES[modality]
  labels = np.random.default_rng(0).integers(3, size=200_000)
  cues = lib.sample_cues(labels, rates, np.random.default_rng(1))
  wrong = (cues != labels) & (cues != lib.UNCLEAR)
  assert (cues == labels).mean() == pytest.approx(rates.agree, abs=0.004)
  assert (cues == lib.UNCLEAR).mean() == pytest.approx(rates.unclear, abs=0.004)
  assert wrong.mean() == pytest.approx(rates.wrong, abs=0.003)
  # A wrong cue is either other label, equally often, whatever the label.
  for label in range(3):
    seen = np.bincount(cues[wrong & (labels == label)], minlength=3)
    assert seen[label] == 0
    others = np.delete(seen, label)
    assert abs(others[0] - others[1]) < 0.1 * others.sum()


def test_generated_splits_show_the_cues_at_the_designed_rates(behaviour):
  """The stored training split (20,000 examples) follows RATES within sampling error."""
  train = behaviour.source("train")
  rows = train.__getitems__(list(range(len(train))))
  labels = np.array([r["label"] for r in rows])
  np.testing.assert_array_equal(np.bincount(labels), [6667, 6667, 6666])
  for modality, rates in lib.RATES.items():
    cues = np.array([r[f"{modality}_cue"] for r in rows])
    assert (cues == labels).mean() == pytest.approx(rates.agree, abs=0.015), modality
    assert (cues == lib.UNCLEAR).mean() == pytest.approx(rates.unclear, abs=0.015), modality


def cue_of_reflection(text):
  """The cues whose cue sentences (any wording, any filling) occur in `text`."""
  found = set()
  for cue, templates in enumerate(lib.CUE_SENTENCES):
    for template in templates:
      pattern = re.escape(template).replace(r"\{topic\}", "(?:" + "|".join(
          map(re.escape, lib.TOPICS)) + ")").replace(r"\{n\}", "(?:" + "|".join(
              lib.COUNTS) + ")")
      if re.search(pattern, text):
        found.add(cue)
  return found


def test_reflections_state_their_cue_and_vary(split):
  for text, cue in zip(split["reflection"], split["text_cue"].tolist(), strict=True):
    assert cue_of_reflection(text) == (set() if cue == lib.UNCLEAR else {cue}), text
    assert 1 <= len(re.findall(r"[.!?](?:\s|$)", text)) <= 3, text
  # Many distinct wordings per cue.
  for cue in range(len(lib.CUES)):
    texts = {t for t, c in zip(split["reflection"], split["text_cue"], strict=True) if c == cue}
    assert len(texts) > 100, lib.CUES[cue]


def test_worksheets_show_their_cue(split):
  """A small classifier reads the image cue from the pixels of held-out worksheets, and the
  ink inside the answer boxes follows the design."""
  from sklearn.neural_network import MLPClassifier

  images, cues = split["image"].reshape(1200, -1) / 255.0, split["image_cue"]
  classifier = MLPClassifier((128,), max_iter=500, random_state=0).fit(images[:900], cues[:900])
  assert classifier.score(images[900:], cues[900:]) > 0.9
  # Dark pixels (ink well below the paper) on the page: blank sheets have fewest,
  # scribbled-over sheets the most.
  ink = [(split["image"][cues == c] < 110).sum(axis=(1, 2, 3)).mean() for c in range(3)]
  assert ink[STRUGGLING] > ink[ENGAGED] > ink[DISENGAGED]
  # Unclear photos show no page: no sharp pencil edges, so small pixel differences.
  edges = np.abs(np.diff(split["image"].astype(float), axis=2)).mean(axis=(1, 2, 3))
  assert edges[cues == lib.UNCLEAR].max() < edges[cues != lib.UNCLEAR].min()


def test_audio_clips_show_their_cue(split):
  audio, cues = split["audio"].astype(np.float64) / 32768, split["audio_cue"]
  frames = audio.reshape(len(audio), 50, 80)  # 10 ms frames
  loud = np.sqrt((frames ** 2).mean(axis=-1)) > 0.03  # [n, 50]
  active = loud.mean(axis=1)
  # Steady speech fills the clip; hesitant speech leaves long pauses; near silence is quiet;
  # static is loud everywhere, but unlike speech it has no strong pitch harmonics.
  assert active[cues == ENGAGED].min() > 0.8
  assert 0.05 < active[cues == STRUGGLING].min() and active[cues == STRUGGLING].max() < 0.45
  assert active[cues == DISENGAGED].max() == 0
  assert active[cues == lib.UNCLEAR].min() == 1
  spectrum = np.abs(np.fft.rfft(audio, axis=-1))  # 2 Hz bins
  peakiness = spectrum.max(axis=1) / spectrum.mean(axis=1)
  assert peakiness[cues == lib.UNCLEAR].max() < peakiness[cues == ENGAGED].min()


def test_bayes_accuracy_single_modality_is_agree_plus_a_third_of_unclear():
  for modality, rates in lib.RATES.items():
    assert lib.bayes_accuracy([modality]) == pytest.approx(rates.agree + rates.unclear / 3)


def test_bayes_accuracy_orders_subsets_all_then_pairs_then_singles():
  accuracy = {subset: lib.bayes_accuracy(subset) for subset in lib.subsets()}
  assert len(accuracy) == 7
  singles = [a for s, a in accuracy.items() if len(s) == 1]
  pairs = [a for s, a in accuracy.items() if len(s) == 2]
  everything = accuracy[lib.MODALITIES]
  assert everything > max(pairs) + 0.05 and min(pairs) > max(singles) + 0.08
  assert everything == pytest.approx(0.8774, abs=1e-4)
  assert max(pairs) == pytest.approx(0.8160, abs=1e-4)
  assert max(singles) == pytest.approx(0.7133, abs=1e-4)


def test_bayes_accuracy_matches_monte_carlo_of_the_bayes_rule():
  rng = np.random.default_rng(5)
  labels = rng.integers(3, size=200_000)
  cues = {m: lib.sample_cues(labels, lib.RATES[m], rng) for m in lib.MODALITIES}
  for subset in lib.subsets():
    predicted = lib.bayes_predict({m: cues[m] for m in subset})
    assert (predicted == labels).mean() == pytest.approx(lib.bayes_accuracy(subset), abs=0.004)
  # Another rule (the text cue alone, unclear -> engaged) never beats the Bayes rule.
  guess = np.where(cues["text"] == lib.UNCLEAR, ENGAGED, cues["text"])
  assert (guess == labels).mean() <= lib.bayes_accuracy(("text",)) + 0.004


def test_without_unclear_cues_a_second_modality_adds_nothing():
  """Why the design has `unclear`: hard, symmetric 3-way cues do not add up for a pair."""
  hard = {"a": lib.CueRates(0.7, 0.0, 0.3), "b": lib.CueRates(0.65, 0.0, 0.35),
          "c": lib.CueRates(0.7, 0.0, 0.3)}
  assert lib.bayes_accuracy(("a", "b"), hard) == pytest.approx(0.7)
  assert lib.bayes_accuracy(("a", "b", "c"), hard) > 0.75


def test_built_dataset_matches_the_generator(behaviour):
  assert {name: len(s) for name, s in behaviour.sources.items()} == EduBehaviour.SPLITS
  assert behaviour.num_classes("label") == 3 and behaviour.num_classes("audio_cue") == 4
  # The stored test split holds make_split's examples for the builder's seed (tfds stores
  # them in its own order; `example_id` finds each one).
  expected = lib.make_split(2000, seed=EduBehaviour.SEED + 3)
  stored = behaviour.source("test").__getitems__(list(range(2000)))
  assert sorted(int(e["example_id"]) for e in stored) == list(range(2000))
  for example in stored[:300]:
    i = int(example["example_id"])
    np.testing.assert_array_equal(example["image"], expected["image"][i])
    np.testing.assert_array_equal(example["audio"], expected["audio"][i])
    assert example["reflection"].decode() == expected["reflection"][i]
    for key in ("label", "image_cue", "text_cue", "audio_cue"):
      assert example[key] == expected[key][i], key


def test_tokenizer_covers_reflections_within_the_config_length(behaviour):
  tokenizer = load_tokenizer(behaviour.tokenizer_path)
  assert 100 < len(tokenizer) <= EduBehaviour.VOCAB_SIZE
  texts = [e["reflection"].decode() for name in ("validation", "test")
           for e in behaviour.source(name).__getitems__(list(range(2000)))]
  ids = tokenizer(texts)["input_ids"]
  assert tokenizer.unk_token_id not in {i for row in ids for i in row}
  assert max(len(row) for row in ids) <= lib.MAX_REFLECTION_TOKENS
  # The longest possible reflection: the longest cue sentence, context and remark.
  count = lambda text: len(tokenizer(text)["input_ids"]) - 2  # noqa: E731
  fills = lambda template: [template.format(topic=topic, n=n)  # noqa: E731
                            for topic in lib.TOPICS for n in lib.COUNTS]
  longest = 2 + sum(max(count(text) for template in templates for text in fills(template))
                    for templates in (sum(lib.CUE_SENTENCES, ()), lib.CONTEXT_SENTENCES,
                                      lib.REMARKS))
  assert longest == lib.MAX_REFLECTION_TOKENS
  assert load_config("configs/edu/behaviour.py").input.max_text_len >= longest


def test_config_modalities_arg():
  for subset in lib.subsets():
    config = load_config("configs/edu/behaviour.py", "modalities=" + "+".join(subset))
    assert config.model.modalities == ",".join(subset)
  assert load_config("configs/edu/behaviour.py").model.modalities == "image,text,audio"
  for bad in ("", "image+image", "image+video", "text+"):
    with pytest.raises(ConfigError, match="config arg 'modalities'"):
      load_config("configs/edu/behaviour.py", "modalities=" + bad)


@pytest.mark.parametrize("subset", lib.subsets(), ids="+".join)
def test_every_subset_builds_a_model_with_its_towers(behaviour, data_dir, subset):
  config = load_config("configs/edu/behaviour.py", "runlocal,modalities=" + "+".join(subset),
                       **{"data.data_dir": data_dir})
  exp = loop.build_experiment(config, jax.devices()[:1])
  batch = exp.preprocessor.collate([exp.preprocessor.example(behaviour.source("test")[i])
                                    for i in range(2)])
  params = jax.eval_shape(lambda b: exp.model.init(jax.random.key(0), b, train=False), batch)
  assert set(params["params"]) == {f"{m}_encoder" for m in subset} | {"fusion", "heads"}
  logits = jax.eval_shape(lambda p, b: exp.model.apply(p, b), params, batch)
  assert logits["label"].shape == (2, 3)


def test_runlocal_trains_on_all_three_modalities(data_dir, tmp_path):
  config = load_config("configs/edu/behaviour.py", "runlocal", **{"data.data_dir": data_dir})
  assert config.model.modalities == "image,text,audio"
  workdir = str(tmp_path / "run")
  loop.train(config, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    losses = [r["train/loss"] for r in map(json.loads, f) if "train/loss" in r]
  assert len(losses) == 3 and losses[-1] < 0.9 * losses[0], losses  # 1.06 -> 0.77 measured
  with open(os.path.join(workdir, "eval.json")) as f:
    written = json.load(f)
  assert written["step"] == 30
  for split in ("validation", "test"):
    assert written[split]["num_examples"] == 2000
    assert written[split]["accuracy"] > 0.5  # chance 1/3; 0.72 on test when measured
