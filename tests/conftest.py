"""Test setup: 8 fake CPU devices (so sharding is exercised) and one shared data dir.

XLA_FLAGS must be set before jax is imported anywhere, hence at the top of conftest.
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
  """A tfds data dir shared by the whole session (datasets build once, offline)."""
  return str(tmp_path_factory.mktemp("tensorflow_datasets"))


@pytest.fixture(scope="session")
def grading(data_dir):
  """The prepared `edu_grading` dataset."""
  import ml_collections

  from mmjax.data import pipeline

  return pipeline.open_dataset(ml_collections.ConfigDict(
      dict(name="edu_grading", data_dir=data_dir, cache=False)))


@pytest.fixture(scope="session")
def scenes(data_dir):
  """The prepared `edu_scenes` dataset."""
  import ml_collections

  from mmjax.data import pipeline

  return pipeline.open_dataset(ml_collections.ConfigDict(
      dict(name="edu_scenes", data_dir=data_dir, cache=False)))


@pytest.fixture(scope="session")
def runlocal_workdir(data_dir, tmp_path_factory) -> str:
  """A workdir after training the default experiment's `runlocal` config (60 steps)."""
  from mmjax.train import loop

  workdir = str(tmp_path_factory.mktemp("runlocal") / "run")
  loop.train(load_config("configs/edu/grading.py", "runlocal", **{"data.data_dir": data_dir}),
             workdir)
  return workdir


def load_config(path: str, arg: str | None = None, **overrides):
  """get_config(arg) of a repo config file, with dotted-key overrides."""
  from mmjax.main import load_config_file

  config = load_config_file(str(REPO / path) + (f":{arg}" if arg else ""))
  for key, value in overrides.items():
    node = config
    *parents, last = key.split(".")
    for parent in parents:
      node = node[parent]
    node[last] = value
  return config


@pytest.fixture(scope="session")
def shapes_workdir(data_dir, tmp_path_factory) -> str:
  """A workdir after training `configs/edu/shapes_relational.py:runlocal` (60 steps,
  cross_attention fusion with attention supervision in fusion layer 0)."""
  from mmjax.train import loop

  workdir = str(tmp_path_factory.mktemp("shapes") / "run")
  loop.train(load_config("configs/edu/shapes_relational.py", "runlocal",
                         **{"data.data_dir": data_dir}), workdir)
  return workdir
