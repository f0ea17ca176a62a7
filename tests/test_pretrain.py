"""Pre-training (configs/pretrain/itc_itm_mlm.py): the model's objectives, the evaluators,
a runlocal run, and fine-tuning from its workdir (`config.init_from`)."""

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train import read_metrics, train_losses

from mmjax.config import ConfigError
from mmjax.evaluate import evaluators
from mmjax.evaluate.metrics import retrieval_metrics, retrieval_ranks
from mmjax.models.model import build_pretrain_model
from mmjax.tasks.pretrain import PretrainTask
from mmjax.train import checkpoint, loop

from conftest import load_config


def pretrain_config(data_dir, arg="runlocal", **overrides):
  return load_config("configs/pretrain/itc_itm_mlm.py", arg,
                     **{"data.data_dir": data_dir, **overrides})


def finetune_config(data_dir, pretrained, arg="", **overrides):
  return load_config("configs/pretrain/grading_finetune.py",
                     f"runlocal,pretrained={pretrained}" + (f",{arg}" if arg else ""),
                     **{"data.data_dir": data_dir, **overrides})


@pytest.fixture(scope="module")
def pretrain_workdir(data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("pretrain") / "run")
  loop.train(pretrain_config(data_dir), workdir)
  return workdir


def tiny_model(objectives, contrastive="softmax"):
  config = load_config("configs/pretrain/itc_itm_mlm.py", "runlocal")
  model = build_pretrain_model(config.model, objectives=objectives, vocab_size=50,
                               contrastive=contrastive, mask_prob=0.15, mask_id=4,
                               num_special=5)
  return model


def tiny_batch(batch=8, length=10, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, 50, (batch, length)).astype(np.int32)
  ids[:, 0], ids[:, -1] = 2, 3
  ids[:, -3:-1] = 0  # padding before a trailing [SEP] would be odd, but masks decide
  mask = ids > 0
  return dict(image=rng.normal(size=(batch, 16, 16, 3)).astype(np.float32), text_ids=ids,
              text_mask=mask, example_mask=np.ones(batch, bool))


def test_runlocal_pretraining_losses_are_finite_and_go_down(pretrain_workdir):
  records = [r for r in read_metrics(pretrain_workdir) if "train/loss" in r]
  assert len(records) == 4  # 20 steps, logged every 5
  for name in ("loss", "itc/loss", "itm/loss", "mlm/loss"):
    values = [r[f"train/{name}"] for r in records]
    assert all(np.isfinite(values)), (name, values)
  losses = [loss for _, loss in train_losses(pretrain_workdir)]
  assert losses[-1] < 0.9 * losses[0], losses  # 10.9 -> 8.9 when measured
  # The total is the weighted sum of the objectives (all weights 1 here).
  last = records[-1]
  assert last["train/loss"] == pytest.approx(
      last["train/itc/loss"] + last["train/itm/loss"] + last["train/mlm/loss"], rel=1e-5)
  with open(os.path.join(pretrain_workdir, "eval.json")) as f:
    results = json.load(f)
  for split in ("validation", "test"):
    assert results[split]["num_examples"] == 1000
    assert set(results[split]) >= {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5",
                                   "t2i_r10", "itm_accuracy", "mlm_accuracy"}
    assert 0 <= results[split]["i2t_r1"] <= results[split]["i2t_r5"] <= \
        results[split]["i2t_r10"] <= 1
  assert results["zeroshot"]["num_examples"] == 1000
  assert os.path.exists(os.path.join(pretrain_workdir, "tokenizer.json"))


def test_pretraining_on_eight_devices_matches_one_device(data_dir, tmp_path):
  """Contrastive negatives, mined ITM negatives and MLM masks span the global batch, so
  sharding the batch over 8 devices changes nothing."""
  config = pretrain_config(data_dir, total_steps=3, log_every_steps=1,
                           **{"checkpoint.every_steps": 3, "schedule.warmup_steps": 1,
                              "evals.splits": ("validation",), "evals.zeroshot": None,
                              "evals.headline": "validation/i2t_r1"})
  one, eight = str(tmp_path / "one"), str(tmp_path / "eight")
  loop.train(config, one, devices=jax.devices()[:1])
  loop.train(config, eight, devices=jax.devices())
  for key in ("train/itc/loss", "train/itm/loss", "train/mlm/loss"):
    a = [r[key] for r in read_metrics(one) if key in r]
    b = [r[key] for r in read_metrics(eight) if key in r]
    assert len(a) == 3
    np.testing.assert_allclose(b, a, atol=1e-5, rtol=0, err_msg=key)


def test_model_outputs_per_objective():
  model = tiny_model(("itc", "itm", "mlm", "caption"))
  batch = tiny_batch()
  params = model.init({"params": jax.random.key(0)}, batch)["params"]
  assert set(params) == {"image_encoder", "text_encoder", "fusion", "itc", "itm_head",
                         "mlm_head", "caption_decoder"}
  out = model.apply({"params": params}, batch, train=True,
                    rngs={"sample": jax.random.key(1)})
  assert out["itm_logits"].shape == (8, 3, 2)
  assert out["mlm_logits"].shape == (8, 10, 50)
  assert out["caption_logits"].shape == (8, 9, 50)
  norms = np.linalg.norm(np.asarray(out["image_emb"]), axis=-1)
  np.testing.assert_allclose(norms, 1.0, atol=1e-5)
  # MLM targets only real, non-special tokens; captioning predicts every next real token.
  selected = np.asarray(out["mlm_weights"]) > 0
  assert not np.any(selected & (batch["text_ids"] < 5))
  np.testing.assert_array_equal(np.asarray(out["caption_weights"]), batch["text_mask"][:, 1:])
  task = PretrainTask(weights={"itc": 1.0, "itm": 0.5, "mlm": 1.0, "caption": 2.0})
  total, metrics = task.loss(out, batch)
  expected = sum(w * metrics[f"{name}/loss"] for name, w in task.weights.items())
  assert float(total) == pytest.approx(float(expected), rel=1e-6)
  # Evaluation is deterministic: hardest negatives and a fixed masking key.
  first = model.apply({"params": params}, batch)
  second = model.apply({"params": params}, batch)
  np.testing.assert_array_equal(first["mlm_weights"], second["mlm_weights"])


def test_itm_never_uses_an_identical_text_as_a_negative():
  model = tiny_model(("itc", "itm"))
  batch = tiny_batch()
  batch["text_ids"][:] = batch["text_ids"][0]  # every caption the same
  params = model.init({"params": jax.random.key(0)}, batch)["params"]
  out = model.apply({"params": params}, batch, train=True, rngs={"sample": jax.random.key(1)})
  weights = np.asarray(out["itm_weights"])
  np.testing.assert_array_equal(weights[:, 0], 1.0)  # the positives
  np.testing.assert_array_equal(weights[:, 1:], 0.0)  # no valid negative exists
  batch["example_mask"][6:] = False
  batch["text_ids"][:, 1] = np.arange(8) + 10  # now all distinct
  out = model.apply({"params": params}, batch)
  np.testing.assert_array_equal(np.asarray(out["itm_weights"])[6:], 0.0)  # padding


def test_sigmoid_contrastive_has_a_learnable_bias():
  model = tiny_model(("itc",), contrastive="sigmoid")
  batch = tiny_batch()
  params = model.init({"params": jax.random.key(0)}, batch)["params"]
  assert float(params["itc"]["bias"]) == -10.0
  task = PretrainTask(weights={"itc": 1.0}, contrastive="sigmoid")
  grads = jax.grad(lambda p: task.loss(model.apply({"params": p}, batch), batch)[0])(params)
  assert float(jnp.abs(grads["itc"]["bias"])) > 0
  assert set(task.loss(model.apply({"params": params}, batch), batch)[1]) >= {
      "itc/loss", "itc/scale", "itc/i2t_accuracy", "loss"}


def test_retrieval_metrics_by_hand():
  sim = np.array([[0.9, 0.1, 0.3],    # image 0: its text first
                  [0.8, 0.5, 0.2],    # image 1: its text second (behind text 0)
                  [0.4, 0.7, 0.6]])   # image 2: its text second (behind text 1)
  np.testing.assert_array_equal(retrieval_ranks(sim), [0, 1, 1])
  # Columns as queries: text 0 -> image 0 first; text 1 -> image 2 beats image 1;
  # text 2 -> image 2 first.
  np.testing.assert_array_equal(retrieval_ranks(sim.T), [0, 1, 0])
  metrics = retrieval_metrics(sim, ks=(1, 2))
  assert metrics["i2t_r1"] == pytest.approx(1 / 3)
  assert metrics["i2t_r2"] == pytest.approx(1.0)
  assert metrics["t2i_r1"] == pytest.approx(2 / 3)
  assert metrics["t2i_r2"] == pytest.approx(1.0)
  assert metrics["mean_recall"] == pytest.approx((1 / 3 + 1 + 2 / 3 + 1) / 4)
  # A tie with the positive counts against it.
  assert retrieval_ranks(np.array([[0.5, 0.5], [0.0, 1.0]]))[0] == 1


def test_pretrain_evaluator_counts_each_example_once_whatever_the_batching():
  rng = np.random.default_rng(0)
  image = rng.normal(size=(10, 4))
  text = image + 0.3 * rng.normal(size=(10, 4))

  def predict(params, batch):
    del params
    return {"embeddings": {"image": batch["image"], "text": batch["text"]},
            "itm": {"correct": batch["correct"], "count": np.ones(len(batch["image"]))}}

  correct = (np.arange(10) % 2).astype(float)

  def batches(size):  # the last batch padded with copies of its first row
    for start in range(0, 10, size):
      rows = np.arange(start, start + size)
      real = rows < 10
      rows = np.where(real, rows, start)
      yield {"image": image[rows], "text": text[rows], "correct": correct[rows],
             "example_mask": real}

  results = [dict(evaluators.PretrainEvaluator(predict, lambda s=s: batches(s),
                                               lambda b: b).run(None)) for s in (8, 10)]
  assert results[0] == results[1]
  assert results[0]["num_examples"] == 10
  assert results[0]["itm_accuracy"] == pytest.approx(0.5)
  assert results[0] == {**results[0], **retrieval_metrics(image @ text.T)}


def test_zeroshot_evaluator_by_hand():
  classes = np.eye(3)
  prompts = {"text": np.repeat(classes, 2, axis=0), "example_mask": np.ones(6, bool)}
  images = np.array([[1.0, 0.1, 0], [0, 0, 2.0], [0, 1.0, 0.9], [0.2, 0.0, 0.1]])
  labels = np.array([0, 2, 2, 0])

  def embed(params, batch):
    del params
    return {key: batch[key] for key in ("image", "text") if key in batch}

  batch = {"image": images, "label": labels, "example_mask": np.ones(4, bool)}
  evaluator = evaluators.ZeroShotEvaluator(embed, lambda: [batch], lambda b: b, prompts, 3)
  results = dict(evaluator.run(None))
  assert results["accuracy"] == pytest.approx(0.75)  # image 2 looks more like class 1
  assert results["num_examples"] == 4


def test_finetuning_from_a_pretraining_workdir(pretrain_workdir, data_dir, tmp_path, caplog):
  config = finetune_config(data_dir, pretrain_workdir)
  exp = loop.build_experiment(config)
  with caplog.at_level(logging.INFO, logger="mmjax"):
    params = loop.initial_params(exp)
  report = " ".join(r.getMessage() for r in caplog.records if "init_from" in r.getMessage())
  assert "image_encoder" in report and "fusion" in report
  assert "new" in report and "heads/label" in report  # the grading heads are new
  assert "not in this model" in report and "itc/" in report  # pre-training heads ignored
  source = checkpoint.read_params(pretrain_workdir)
  for tower in ("image_encoder", "text_encoder", "fusion"):
    for got, want in zip(jax.tree.leaves(params[tower]), jax.tree.leaves(source[tower]),
                         strict=True):
      np.testing.assert_array_equal(np.asarray(got), want)
  # The pre-training run's tokenizer reads the grading questions without [UNK].
  ids = exp.preprocessor.text_encoder(["What is 7 - 3?", "Subtract four from 8."])["text_ids"]
  assert not np.any(ids == 1)
  # The 8x8 grey digits reach the image tower as 16x16 RGB, as in pre-training.
  assert exp.example_batch()["image"].shape == (1, 16, 16, 3)
  scratch = loop.initial_params(loop.build_experiment(
      finetune_config(data_dir, pretrain_workdir, "scratch")))
  assert not np.array_equal(np.asarray(scratch["fusion"]["cross_encoder"]["block_0"]["mlp"]
                                       ["fc1"]["kernel"]),
                            source["fusion"]["cross_encoder"]["block_0"]["mlp"]["fc1"]["kernel"])
  # And it trains.
  results = loop.train(finetune_config(data_dir, pretrain_workdir, "steps=20",
                                       **{"evals.splits": ("test",)}), str(tmp_path / "ft"))
  assert 0 <= results["test"]["accuracy"] <= 1


def test_init_from_with_other_shapes_names_every_mismatch(pretrain_workdir, data_dir):
  config = finetune_config(data_dir, pretrain_workdir,
                           **{"model.fusion.mlp_dim": 48})
  exp = loop.build_experiment(config)
  with pytest.raises(ConfigError, match=r"config.init_from: \d+ parameter\(s\) .* other shapes"
                     r".*fusion/cross_encoder/block_0/mlp/fc1/kernel \(32, 128\) vs \(32, 48\)"):
    loop.initial_params(exp)
  workdir = os.path.join(os.path.dirname(pretrain_workdir), "mismatched")
  with pytest.raises(ConfigError, match="other shapes"):
    loop.train(config, workdir)
  assert not os.path.exists(workdir)  # nothing written before the check
  with pytest.raises(ConfigError, match="no mmjax checkpoint"):
    checkpoint.read_params(os.path.dirname(pretrain_workdir))
