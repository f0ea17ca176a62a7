import collections

import numpy as np
import pytest

from mmjax.data import pipeline
from mmjax.data.builders.edu_grading import questions
from mmjax.data.builders.edu_grading.edu_grading import load_digit_images
from mmjax.data.tokenizer import SPECIAL_TOKENS, TextEncoder, build_wordpiece, load_tokenizer


def all_examples(grading, split):
  source = grading.source(split)
  return [source[i] for i in range(len(source))]


def test_questions_have_the_answer_they_claim():
  rng = np.random.default_rng(0)
  seen_wordings = set()
  for _ in range(2000):
    answer = int(rng.integers(10))
    question = questions.make_question(answer, rng)
    assert questions.evaluate_question(question) == answer, question
    seen_wordings.add(question.split()[0])
  assert len(seen_wordings) > 15  # varied wording


def test_splits_are_disjoint_and_complete(grading):
  ids = {split: {int(e["image_id"]) for e in all_examples(grading, split)}
         for split in ("train", "validation", "test")}
  assert not ids["train"] & ids["test"]
  assert not ids["train"] & ids["validation"]
  assert not ids["validation"] & ids["test"]
  assert len(ids["train"] | ids["validation"] | ids["test"]) == 1797
  assert len(ids["test"]) == pytest.approx(0.2 * 1797, abs=10)


def test_examples_are_consistent_and_balanced(grading):
  images, digits = load_digit_images()
  examples = all_examples(grading, "test")
  per_image = collections.defaultdict(list)
  for ex in examples:
    image_id = int(ex["image_id"])
    np.testing.assert_array_equal(ex["image"], images[image_id])
    assert ex["written_digit"] == digits[image_id]
    assert questions.evaluate_question(ex["question"].decode()) == ex["answer"]
    assert ex["label"] == int(ex["answer"] == ex["written_digit"])
    per_image[image_id].append(int(ex["label"]))
  assert all(np.mean(labels) == 0.5 for labels in per_image.values())
  # Each answer digit is asked about as often with a correct as with a wrong image.
  by_answer = collections.defaultdict(list)
  for ex in examples:
    by_answer[int(ex["answer"])].append(int(ex["label"]))
  for answer, labels in by_answer.items():
    assert abs(np.mean(labels) - 0.5) < 0.08, answer


def test_tokenizer_is_shipped_and_loads_through_transformers(grading):
  tokenizer = load_tokenizer(grading.tokenizer_path)
  assert 50 < len(tokenizer) <= 512
  assert tokenizer.convert_ids_to_tokens(list(range(5))) == list(SPECIAL_TOKENS)
  encoder = TextEncoder(tokenizer, max_len=16)
  out = encoder(["What is 7 - 3?", "Compute 2 + 5."])
  assert out["text_ids"].shape == (2, 16) and out["text_ids"].dtype == np.int32
  tokens = tokenizer.convert_ids_to_tokens(out["text_ids"][0][out["text_mask"][0]].tolist())
  assert tokens == ["[CLS]", "what", "is", "7", "-", "3", "?", "[SEP]"]
  assert "[UNK]" not in tokenizer.convert_ids_to_tokens(
      encoder(["Subtract four from 8."])["text_ids"][0].tolist())


def test_long_text_is_truncated_with_one_warning(grading, caplog):
  encoder = TextEncoder(load_tokenizer(grading.tokenizer_path), max_len=6)
  with caplog.at_level("WARNING"):
    first = encoder(["What is 7 - 3 plus 4 minus 2?"])
    encoder(["What is 1 + 2 + 3 + 4?"])
  assert first["text_mask"].sum() == 6
  tokens = encoder.tokenizer.convert_ids_to_tokens(first["text_ids"][0].tolist())
  assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
  assert len([r for r in caplog.records if "truncated" in r.message]) == 1


def make_preprocessor(grading, fields=("image", "text")):
  names = {"image": "image", "text": "question"}
  encoder = TextEncoder(load_tokenizer(grading.tokenizer_path), 32) if "text" in fields else None
  return pipeline.Preprocessor({"label": "label", **{f: names[f] for f in fields}}, encoder)


def test_train_batches_keys_and_values(grading):
  batches = pipeline.train_iterator(grading.source("train"), make_preprocessor(grading),
                                    global_batch_size=16, seed=0)
  batch = next(batches)
  assert set(batch) == {"image", "text_ids", "text_mask", "label", "example_mask"}
  assert batch["image"].shape == (16, 8, 8, 1) and batch["image"].dtype == np.float32
  assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0
  assert batch["text_ids"].shape == (16, 32) and batch["text_mask"].dtype == bool
  assert (batch["text_ids"][~batch["text_mask"]] == 0).all()
  assert batch["example_mask"].all()


def test_train_order_is_seeded_and_resumable(grading):
  make = lambda seed: pipeline.train_iterator(  # noqa: E731
      grading.source("train"), make_preprocessor(grading, ("image",)), global_batch_size=8,
      seed=seed)
  a, b, c = make(0), make(0), make(1)
  first = [next(a) for _ in range(5)]
  for batch in first:
    np.testing.assert_array_equal(batch["image"], next(b)["image"])
  assert not np.array_equal(first[0]["image"], next(c)["image"])
  state = a.get_state()
  expected = [next(a)["image"] for _ in range(3)]
  resumed = make(0)
  resumed.set_state(state)
  for image in expected:
    np.testing.assert_array_equal(next(resumed)["image"], image)


def test_epochs_are_reshuffled(grading):
  source = grading.source("validation")
  batches = pipeline.train_iterator(source, make_preprocessor(grading, ("image",)),
                                    global_batch_size=len(source) // 4 * 4 // 4, seed=0)
  epoch_one = np.concatenate([next(batches)["label"] for _ in range(4)])
  epoch_two = np.concatenate([next(batches)["label"] for _ in range(4)])
  assert not np.array_equal(epoch_one, epoch_two)


def test_eval_batches_cover_split_once_with_padding_mask(grading):
  source = grading.source("validation")
  batches = list(pipeline.eval_batches(source, make_preprocessor(grading),
                                       global_batch_size=100))
  assert {b["label"].shape[0] for b in batches} == {100}
  real = sum(int(b["example_mask"].sum()) for b in batches)
  assert real == len(source)
  assert not batches[-1]["example_mask"][len(source) % 100:].any()
  labels = np.concatenate([b["label"][b["example_mask"]] for b in batches])
  np.testing.assert_array_equal(labels, [int(source[i]["label"]) for i in range(len(source))])


def test_every_process_yields_the_same_number_of_eval_batches(grading, monkeypatch):
  source = [grading.source("validation")[i] for i in range(257)]  # 129 + 128 examples
  shares = []
  for process in (0, 1):
    monkeypatch.setattr(pipeline.jax, "process_count", lambda: 2)
    monkeypatch.setattr(pipeline.jax, "process_index", lambda p=process: p)
    shares.append(list(pipeline.eval_batches(source, make_preprocessor(grading, ("image",)),
                                             global_batch_size=256)))
  assert [len(batches) for batches in shares] == [2, 2]  # process 1 adds a filler batch
  assert [sum(int(b["example_mask"].sum()) for b in batches) for batches in shares] == [129, 128]
  assert not shares[1][1]["example_mask"].any()


def test_empty_eval_split_is_an_error(grading):
  from mmjax.config import ConfigError
  with pytest.raises(ConfigError, match="split is empty"):
    next(pipeline.eval_batches([], make_preprocessor(grading), global_batch_size=8))


def test_in_memory_cache_matches_source(grading):
  source = grading.source("validation")
  cached = pipeline.InMemorySource(source, chunk=100)
  assert len(cached) == len(source)
  for i in (0, 99, 100, len(source) - 1):
    np.testing.assert_array_equal(cached[i]["image"], source[i]["image"])
    assert cached[i]["question"] == source[i]["question"]


def test_split_slices_are_the_first_examples_in_stored_order(grading):
  whole = grading.source("train")
  for split, start, stop in (("train[:100]", 0, 100), ("train[1000:1010]", 1000, 1010),
                             ("train[:10%]", 0, len(whole) // 10), ("train[50%:]",
                                                                   len(whole) // 2, len(whole))):
    part = grading.source(split)
    assert len(part) == stop - start, split
    for i in (0, len(part) - 1):
      np.testing.assert_array_equal(part[i]["image"], whole[start + i]["image"])
    batch = part.__getitems__([0, len(part) - 1])
    assert [b["question"] for b in batch] == [whole[start]["question"],
                                              whole[stop - 1]["question"]]
  with pytest.raises(IndexError):
    grading.source("train[:100]")[100]
  for bad in ("train[5:2]", f"train[:{len(whole) + 1}]"):
    with pytest.raises(ValueError, match=r"expected 0 <= start < stop"):
      grading.source(bad)
  # A sliced split trains like any other (the learning-curve ablation's data sizes).
  batches = pipeline.train_iterator(grading.source("train[:40]"), make_preprocessor(grading),
                                    global_batch_size=16, seed=0, num_threads=1)
  assert next(batches)["image"].shape[0] == 16


def test_train_groups_keep_every_example_of_the_first_distinct_values(grading):
  """`config.data.train_groups`: all the questions about the first N images met."""
  import ml_collections
  data = ml_collections.ConfigDict(dict(train_split="train[:2000]",
                                        train_groups=dict(feature="", count=0)))
  whole = grading.source("train[:2000]")
  assert len(pipeline.train_source(grading, data)) == 2000  # off while feature is ""
  data.train_groups = dict(feature="image_id", count=30)
  part = pipeline.train_source(grading, data)
  ids = [int(whole[i]["image_id"]) for i in range(len(whole))]
  first = list(dict.fromkeys(ids))[:30]
  expected = [i for i, v in enumerate(ids) if v in first]
  assert len(part) == len(expected) > 30  # several questions per image
  assert {int(part[j]["image_id"]) for j in range(len(part))} == set(first)
  for j in (0, len(part) - 1):
    assert part[j]["question"] == whole[expected[j]]["question"]
  for groups, message in ((dict(feature="image_id", count=0), "count: expected a positive"),
                          (dict(feature="pixels", count=3), "has no feature 'pixels'"),
                          (dict(feature="image_id", count=10**6), r"split 'train\[:2000\]' has")):
    data.train_groups = groups
    with pytest.raises(ValueError, match=f"config.data.train_groups.*{message}"):
      pipeline.train_source(grading, data)


def test_unknown_dataset_and_split(grading):
  import ml_collections
  with pytest.raises(ValueError, match="unknown dataset 'mnist'; expected one of .*edu_grading"):
    pipeline.open_dataset(ml_collections.ConfigDict(dict(name="mnist", data_dir="/tmp",
                                                         cache=False)))
  with pytest.raises(ValueError, match="has no split 'dev'"):
    grading.source("dev")


def test_audio_role_is_a_float_waveform_input():
  """int16 PCM is scaled to [-1, 1); float waveforms pass through; audio is not a target."""
  preprocessor = pipeline.Preprocessor({"audio": "wave", "label": "label"}, None)
  assert preprocessor.targets == ("label",)
  assert preprocessor.batch_keys == ("audio", "label", "example_mask")
  pcm = np.array([0, 16384, -32768, 32767], np.int16)
  batch = preprocessor.collate([preprocessor.example({"wave": pcm, "label": 1}),
                                preprocessor.example({"wave": pcm[::-1].astype(np.float32)
                                                      / 32768.0, "label": 0})])
  assert batch["audio"].dtype == np.float32 and batch["audio"].shape == (2, 4)
  np.testing.assert_allclose(batch["audio"][0], [0.0, 0.5, -1.0, 32767 / 32768])
  np.testing.assert_allclose(batch["audio"][1], batch["audio"][0][::-1])
  np.testing.assert_array_equal(batch["label"], [1, 0])


def test_vocabulary_build_is_deterministic_and_covers_its_text(tmp_path):
  texts = ["What is 7 - 3?", "Subtract four from 8.", "Maya has 12 apples.", "what is 9?"]
  paths = [str(tmp_path / f"v{i}.json") for i in range(2)]
  for path in paths:
    build_wordpiece(texts * 3, 200, path)
  assert open(paths[0], "rb").read() == open(paths[1], "rb").read()
  tokenizer = load_tokenizer(paths[0])
  vocab = tokenizer.get_vocab()
  # Specials first, then characters, then words by count: "what" and "is" (twice) before
  # the words seen once; every word here fits, so each is one token.
  assert [vocab[t] for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
  assert vocab["what"] < vocab["apples"] and vocab["is"] < vocab["apples"]
  assert tokenizer.tokenize("Subtract four") == ["subtract", "four"]
  # An unseen word of known characters is spelled out, not [UNK].
  assert tokenizer.tokenize("wham") == ["w", "##h", "##a", "##m"]
  # Too small a vocabulary for the characters is an error, not a silent [UNK].
  with pytest.raises(ValueError, match="cannot hold"):
    build_wordpiece(texts, 10, paths[0])


def test_processes_sharing_a_fresh_data_dir_build_it_once(tmp_path):
  """Two runs of a parallel sweep opening a dataset nobody built yet: one builds it, the
  other waits on the lock and reads the same files (no clash over tfds's rename)."""
  import subprocess
  import sys

  from conftest import REPO

  script = ("import ml_collections, sys; from mmjax.data import pipeline; "
            "d = pipeline.open_dataset(ml_collections.ConfigDict(dict(name='edu_grading', "
            "data_dir=sys.argv[1], cache=False))); print(len(d.source('train')))")
  procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(2)]
  outputs = [p.communicate(timeout=600) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
  assert [out.split()[-1] for out, _ in outputs] == ["20128", "20128"]
  # tfds announces each build it starts: one in all.
  assert sum((out + err).count("Downloading and preparing dataset") for out, err in outputs) == 1
