"""`mmjax export` / `mmjax predict` and `mmjax.serving`: the exported function predicts what
the training code predicts, serves without the training code, and nothing is unpickled."""

import _pickle
import json
import os
import pickle
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from mmjax import export as export_lib
from mmjax import serving

PYTHON = sys.executable


def run_cli(*args, cwd=None):
  return subprocess.run([PYTHON, "-m", "mmjax.main", *args], capture_output=True, text=True,
                        cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def exports(runlocal_workdir, tmp_path_factory):
  """{"float32": dir, "int8": dir}: the float32 one through the CLI, int8 through the API."""
  root = tmp_path_factory.mktemp("exports")
  fp32 = str(root / "fp32")
  done = run_cli("export", "--workdir", runlocal_workdir, "--export_dir", fp32)
  assert done.returncode == 0, done.stderr
  assert "params.safetensors" in done.stdout
  int8 = str(root / "int8")
  export_lib.export(runlocal_workdir, int8, quantize="int8")
  return {"float32": fp32, "int8": int8}


@pytest.fixture(scope="module")
def experiment(runlocal_workdir):
  from mmjax.train import loop

  return loop.build_experiment(export_lib.workdir_config(runlocal_workdir),
                               devices=jax.devices()[:1])


def test_files(exports):
  for directory in exports.values():
    assert sorted(os.listdir(directory)) == sorted(serving.FILES.values())
  spec = json.load(open(os.path.join(exports["float32"], "preprocess.json")))
  assert spec["main"] == "label"
  assert spec["class_names"]["label"] == ["incorrect", "correct"]
  assert spec["stored_shape"] == [8, 8, 1] and spec["max_text_len"] == 28


def test_predictions_equal_training_predict_step(exports, experiment, runlocal_workdir):
  from mmjax.data import pipeline
  from mmjax.train import checkpoint
  from mmjax.train.step import make_predict_step

  exp = experiment
  source = exp.dataset.source("test")
  batch = next(pipeline.eval_batches(source, exp.preprocessor, global_batch_size=64))
  predict = make_predict_step(exp.model, exp.task, exp.replicated, exp.batch_sharding)
  expected = jax.device_get(predict(checkpoint.read_params(runlocal_workdir),
                                    exp.to_device(batch)))
  predictor = serving.load(exports["float32"])
  # Serving's preprocessing (raw image bytes and question strings) equals training's.
  raws = [source[i] for i in range(64)]
  ours = predictor.batch([r["image"] for r in raws], [r["question"].decode() for r in raws])
  for key in ("image", "text_ids", "text_mask"):
    np.testing.assert_array_equal(ours[key], batch[key], err_msg=key)
  got = predictor.run(ours)
  assert set(got) == set(expected) == {"label", "written_digit", "answer"}
  for head in got:
    np.testing.assert_allclose(got[head]["probabilities"], expected[head]["probabilities"],
                               atol=1e-5, rtol=0, err_msg=head)
    np.testing.assert_array_equal(got[head]["prediction"], expected[head]["prediction"])
  # The batch size is symbolic: 1 and 7 give the same rows.
  for size in (1, 7):
    part = predictor.run({k: v[:size] for k, v in ours.items()})
    np.testing.assert_allclose(part["label"]["probabilities"],
                               got["label"]["probabilities"][:size], atol=1e-6)


def test_text_encoding_equals_training(exports, experiment):
  texts = ["What is 3 + 4?", "", "Subtract four from 8.",
           " ".join(["seven plus two is how much"] * 20)]  # cut to max_len, [SEP] kept
  encoder = serving.TextEncoder(os.path.join(exports["float32"], "tokenizer.json"), 28)
  ours, theirs = encoder(texts), experiment.preprocessor.text_encoder(texts)
  for key in ("text_ids", "text_mask"):
    np.testing.assert_array_equal(ours[key], theirs[key])


def test_int8_is_smaller_and_agrees(exports, experiment):
  sizes = {name: os.path.getsize(os.path.join(d, "params.safetensors"))
           for name, d in exports.items()}
  ratio = sizes["float32"] / sizes["int8"]
  print(f"params.safetensors: float32 {sizes['float32']} B, int8 {sizes['int8']} B "
        f"({ratio:.2f}x smaller)")
  assert ratio > 2.0
  source = experiment.dataset.source("test")
  raws = [source[i] for i in range(300)]
  images, texts = [r["image"] for r in raws], [r["question"].decode() for r in raws]
  fp32 = serving.load(exports["float32"])
  int8 = serving.load(exports["int8"])
  batch = fp32.batch(images, texts)
  a, b = fp32.run(batch)["label"], int8.run(batch)["label"]
  agreement = float(np.mean(a["prediction"] == b["prediction"]))
  print(f"int8 agrees with float32 on {agreement:.1%} of 300 test examples")
  assert agreement >= 0.95
  assert np.abs(a["probabilities"] - b["probabilities"]).max() < 0.05


def test_serving_imports_no_training_code(exports):
  code = ("import sys, numpy as np\n"
          "from mmjax import serving\n"
          f"p = serving.load({exports['int8']!r})\n"
          "r = p.predict([np.zeros((8, 8, 1), np.uint8)], ['What is 3 + 4?'])\n"
          "assert r[0]['prediction'] in ('correct', 'incorrect'), r\n"
          "bad = [m for m in sys.modules if m.split('.')[0] in ('flax', 'optax', 'orbax',"
          " 'transformers', 'tensorflow_datasets') or m.startswith(('mmjax.train',"
          " 'mmjax.models', 'mmjax.data'))]\n"
          "assert not bad, bad\n")
  done = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr


def test_cli_predict(exports, experiment, tmp_path):
  from PIL import Image

  source = experiment.dataset.source("test")
  rows = []
  for i in range(3):
    raw = source[i]
    Image.fromarray(raw["image"][..., 0]).save(tmp_path / f"{i}.png")
    rows.append({"image": f"{i}.png", "text": raw["question"].decode()})
  expected = serving.load(exports["float32"]).predict(
      [source[i]["image"] for i in range(3)], [r["text"] for r in rows])

  done = run_cli("predict", "--workdir", str(tmp_path), "--export_dir", exports["float32"],
                 "--image", str(tmp_path / "0.png"), "--text", rows[0]["text"])
  assert done.returncode == 0, done.stderr
  lines = done.stdout.splitlines()
  assert lines[0] == expected[0]["prediction"]
  assert {line.split()[0] for line in lines[1:3]} == {"correct", "incorrect"}

  with open(tmp_path / "in.jsonl", "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in rows))
  done = run_cli("predict", "--workdir", str(tmp_path), "--export_dir", exports["float32"],
                 "--jsonl", str(tmp_path / "in.jsonl"))
  assert done.returncode == 0, done.stderr
  out = [json.loads(line) for line in done.stdout.splitlines()]
  assert [o["prediction"] for o in out] == [e["prediction"] for e in expected]
  for o, e in zip(out, expected, strict=True):
    assert o["probabilities"] == pytest.approx(e["probabilities"], abs=1e-6)


def test_cli_export_errors(tmp_path):
  done = run_cli("export", "--workdir", str(tmp_path))
  assert done.returncode == 2
  assert done.stderr.strip() == (f"mmjax: error: --workdir {tmp_path}: no config.json "
                                 "(training writes it); train there first or pass --config")
  done = run_cli("export", "--workdir", str(tmp_path), "--quantize", "int4")
  assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_cli_predict_errors(exports, tmp_path):
  def error(*args):
    done = run_cli("predict", "--workdir", str(tmp_path), *args)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    return done.stderr

  (tmp_path / "a.png").write_bytes(b"")
  assert "run `mmjax export" in error("--image", str(tmp_path / "a.png"), "--text", "x")
  assert "file not found" in error("--export_dir", exports["float32"], "--image",
                                   str(tmp_path / "missing.png"), "--text", "x")
  assert "not a readable image" in error("--export_dir", exports["float32"], "--image",
                                         str(tmp_path / "a.png"), "--text", "x")
  (tmp_path / "in.jsonl").write_text('{"image": "missing.png", "text": "x"}\n')
  message = error("--export_dir", exports["float32"], "--jsonl", str(tmp_path / "in.jsonl"))
  assert "in.jsonl:1" in message and "image" in message
  assert "either" in error("--export_dir", exports["float32"])


@pytest.fixture
def no_pickle(monkeypatch):
  """Every way to unpickle raises."""

  def refuse(*args, **kwargs):
    raise AssertionError("something was unpickled")

  for module in (pickle, _pickle):
    for name in ("load", "loads", "Unpickler"):
      monkeypatch.setattr(module, name, refuse)
  original = np.load

  def np_load(*args, allow_pickle=False, **kwargs):
    if allow_pickle:
      refuse()
    return original(*args, allow_pickle=False, **kwargs)

  monkeypatch.setattr(np, "load", np_load)


def test_loading_unpickles_nothing(exports, experiment, runlocal_workdir, no_pickle):
  from mmjax.train import checkpoint, loop

  params = checkpoint.read_params(runlocal_workdir)
  assert params
  state, _ = loop.create_state(experiment, loop.initial_params(experiment, pretrained=False))
  checkpointer = checkpoint.Checkpointer(runlocal_workdir, keep=2)
  restored = checkpointer.restore(checkpointer.latest_step(), state)  # (state, data, ...)
  checkpointer.close()
  assert int(restored[0].step) == 60 and restored[1]
  for directory in exports.values():
    result = serving.load(directory).predict([np.zeros((8, 8, 1), np.uint8)], ["What is 1 + 1?"])
    assert result[0]["prediction"] in ("correct", "incorrect")


class Payload:
  """Unpickling this creates the file `marker`."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (open, (self.marker, "w"))


@pytest.mark.parametrize("name", ["params.safetensors", "model.jaxexport"])
def test_pickle_payload_is_refused(exports, tmp_path, name):
  directory = str(tmp_path / "export")
  shutil.copytree(exports["float32"], directory)
  marker = tmp_path / "pwned"
  with open(os.path.join(directory, name), "wb") as f:
    pickle.dump(Payload(str(marker)), f)
  with pytest.raises(serving.ExportError, match=name.replace(".", r"\.")) as raised:
    serving.load(directory)
  assert "\n" not in str(raised.value)
  done = run_cli("predict", "--workdir", str(tmp_path), "--export_dir", directory,
                 "--image", os.path.join(directory, "preprocess.json"), "--text", "x")
  assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
  assert not marker.exists()
