"""Tracking: the config in TensorBoard's HPARAMS view, and the optional W&B writer
(offline: nothing leaves the machine), read back from the files they write."""

import glob
import json
import logging
import os
import re
import struct
import sys
import time

import ml_collections
import pytest
from tensorboardX.proto import api_pb2, event_pb2, plugin_hparams_pb2

from mmjax.config import ConfigError
from mmjax.train import loop
from mmjax.utils import writers

from conftest import load_config


def events(directory):
  """Every Event of the TensorBoard event files in `directory` (TFRecord framing: length
  u64, its CRC, the bytes, their CRC)."""
  for path in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
    with open(path, "rb") as f:
      data = f.read()
    position = 0
    while position < len(data):
      (length,) = struct.unpack("<Q", data[position:position + 8])
      event = event_pb2.Event()
      event.ParseFromString(data[position + 12:position + 12 + length])
      position += 12 + length + 4
      yield event


def hparams_plugin_data(directory):
  """{tag: HParamsPluginData} of the hparams plugin's summaries in `directory`."""
  found = {}
  for event in events(directory):
    for value in event.summary.value:
      if value.metadata.plugin_data.plugin_name == "hparams":
        data = plugin_hparams_pb2.HParamsPluginData()
        data.ParseFromString(value.metadata.plugin_data.content)
        found[value.tag] = data
  return found


def test_training_shows_its_config_and_headline_in_tensorboards_hparams_view(
    runlocal_workdir):
  data = hparams_plugin_data(os.path.join(runlocal_workdir, "tensorboard"))
  assert set(data) == {"_hparams_/experiment", "_hparams_/session_start_info",
                       "_hparams_/session_end_info"}
  experiment = data["_hparams_/experiment"].experiment
  assert [m.name.tag for m in experiment.metric_infos] == [
      "test/accuracy", "validation/accuracy", "train/loss"]
  hparams = data["_hparams_/session_start_info"].session_start_info.hparams
  assert {info.name for info in experiment.hparam_infos} == set(hparams)
  assert hparams["optimizer.learning_rate"].number_value == pytest.approx(3e-3)
  assert hparams["input.batch_size"].number_value == 64
  assert hparams["seed"].number_value == 0
  assert hparams["model.fusion.kind"].string_value == "cross_attention"
  assert hparams["model.block.scan"].bool_value is False
  assert json.loads(hparams["evals.splits"].string_value) == ["validation", "test"]
  assert "data.data_dir" in hparams and "wandb.enabled" in hparams
  assert (data["_hparams_/session_end_info"].session_end_info.status
          == api_pb2.Status.Value("STATUS_SUCCESS"))
  # The view's metric value is the last value of its scalar tag in the same run.
  final = [value.simple_value for event in events(os.path.join(runlocal_workdir, "tensorboard"))
           for value in event.summary.value if value.tag == "test/accuracy"]
  with open(os.path.join(runlocal_workdir, "eval.json")) as f:
    assert final[-1] == pytest.approx(json.load(f)["test"]["accuracy"], abs=1e-6)


def wandb_records(workdir):
  """[(run directory, [Record])] of the offline W&B runs under `<workdir>/wandb`, read
  with wandb's own protobufs from its LevelDB-log framed `.wandb` file (a 7-byte file
  header; 32 KiB blocks of chunks: CRC u32, length u16, type u8 (1 full, 2 first,
  3 middle, 4 last), bytes)."""
  from wandb.proto import wandb_internal_pb2

  runs = []
  # In the order they were made ("offline-run-<time>-<id>-1" sorts before "...-<id>/").
  paths = glob.glob(os.path.join(workdir, "wandb", "offline-run-*", "*.wandb"))
  for path in sorted(paths, key=lambda p: os.stat(os.path.dirname(p)).st_ctime_ns):
    with open(path, "rb") as f:
      data = f.read()
    assert data[:4] == b":W&B"
    position, pending, records = 7, b"", []
    while position + 7 <= len(data):
      if 32768 - position % 32768 < 7:  # a block's tail too short for a chunk header
        position += 32768 - position % 32768
        continue
      _, length, kind = struct.unpack("<IHB", data[position:position + 7])
      pending += data[position + 7:position + 7 + length]
      position += 7 + length
      if kind in (1, 4):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        records.append(record)
        pending = b""
    runs.append((os.path.dirname(path), records))
  return runs


def history(records):
  """The logged rows: {"_step", metric: value} (a key with "/" is stored as its parts)."""
  rows = []
  for record in records:
    if record.WhichOneof("record_type") == "history":
      row = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
             for item in record.history.item}
      rows.append({k: v for k, v in row.items() if not k.startswith("_") or k == "_step"})
  return rows


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
  """W&B forced offline and silent, its settings and caches in the test's directory."""
  pytest.importorskip("wandb")  # the `test` extra installs it
  home = tmp_path / "wandb_home"
  for name, value in (("WANDB_MODE", "offline"), ("WANDB_SILENT", "true"),
                      ("WANDB_CONFIG_DIR", home / "config"), ("WANDB_CACHE_DIR", home / "cache"),
                      ("WANDB_DATA_DIR", home / "data"), ("WANDB_API_KEY", "")):
    monkeypatch.setenv(name, str(value))


def wandb_config(**fields):
  config = load_config("configs/edu/grading.py", "runlocal")
  config.wandb = ml_collections.ConfigDict({**config.wandb.to_dict(), **fields})
  return config


def test_wandb_offline_logs_history_and_config_and_a_resumed_run_continues_it(
    offline_wandb, tmp_path):
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  config = wandb_config(enabled=True, tags=("ci",), name="grading")
  writer = writers.MetricWriter(workdir, config=config)
  writer.write(1, {"train/loss": 2.0})
  writer.write(2, {"train/loss": 1.5})
  writer.write(2, {"test/accuracy": 0.75})
  writer.close(finished=True)
  # Resumed from a checkpoint at step 2: the same W&B run id, the next steps.
  writer = writers.MetricWriter(workdir, resume_step=2, config=config)
  writer.write(3, {"train/loss": 1.25})
  writer.close(finished=True)

  with open(os.path.join(workdir, "wandb_id")) as f:
    run_id = f.read().strip()
  # wandb-core writes the run files in the background: wait for both runs' exit records.
  deadline = time.monotonic() + 30
  while True:
    runs = wandb_records(workdir)
    if len(runs) == 2 and all(any(r.WhichOneof("record_type") == "exit" for r in records)
                              for _, records in runs) or time.monotonic() > deadline:
      break
    time.sleep(0.1)
  (first_dir, first), (second_dir, second) = runs
  assert first_dir != second_dir
  for records in (first, second):
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.run_id == run_id and run.project == "mmjax"
    assert run.display_name == "grading" and list(run.tags) == ["ci"]
    logged = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert logged["optimizer"]["learning_rate"] == pytest.approx(3e-3)
    assert logged["model"]["fusion"]["kind"] == "cross_attention"
  assert history(first) == [{"_step": 1, "train/loss": 2.0},
                            {"_step": 2, "train/loss": 1.5, "test/accuracy": 0.75}]
  assert history(second) == [{"_step": 3, "train/loss": 1.25}]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    assert [json.loads(line)["step"] for line in f] == [1, 2, 2, 3]


def test_wandb_enabled_but_not_installed_warns_once_and_logs_the_rest(
    tmp_path, monkeypatch, caplog):
  monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  with caplog.at_level(logging.WARNING, logger="mmjax.utils.writers"):
    writer = writers.MetricWriter(workdir, config=wandb_config(enabled=True))
  writer.write(1, {"train/loss": 2.0})
  writer.close(finished=True)
  warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  assert warnings == ["config.wandb.enabled is set but the wandb package is not installed "
                      "(pip install wandb); logging to metrics.jsonl and TensorBoard only"]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    assert json.loads(f.read()) == {"step": 1, "train/loss": 2.0}
  assert sorted(os.listdir(workdir)) == ["metrics.jsonl", "tensorboard"]  # no W&B files


def test_wandb_off_by_default_and_bad_settings_fail_before_training():
  config = load_config("configs/edu/grading.py", "runlocal")
  assert writers.wandb_settings(config) is None
  assert writers.wandb_settings(ml_collections.ConfigDict({})) is None
  assert writers.wandb_settings(wandb_config(enabled=True)) == dict(
      project="mmjax", entity=None, name=None, tags=[], mode="offline")
  for fields, message in (
      (dict(enabled=True, mode="cloud"),
       "config.wandb.mode='cloud': expected one of offline, online, disabled"),
      (dict(enabled=True, tags="ci"), "config.wandb.tags: expected a tuple of strings, got 'ci'"),
  ):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
      loop.validate(wandb_config(**fields))
  config = wandb_config(projcet="x")
  with pytest.raises(ConfigError, match=r"^config\.wandb: unknown field\(s\) projcet; "):
    loop.validate(config)
