"""Two processes on loopback (`jax.distributed`, 4 CPU devices each) train like one
process with 8 devices: the same losses and parameters within 1e-5."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
from test_train import FIVE_STEPS, assert_trees_close, final_params, runlocal, train_losses

from mmjax.train import loop

from conftest import REPO

TIMEOUT_S = 600  # the two processes are killed after this; the test then fails


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def cli_overrides(data_dir):
  overrides = {"data.data_dir": data_dir, **FIVE_STEPS}
  return [f"--config.{key}={value!r}" if isinstance(value, tuple) else f"--config.{key}={value}"
          for key, value in overrides.items()]


def test_two_processes_match_one_process_with_eight_devices(data_dir, grading, tmp_path):
  reference = str(tmp_path / "one_process")
  loop.train(runlocal(data_dir, **FIVE_STEPS), reference, devices=jax.devices())

  workdir = str(tmp_path / "two_processes")
  address = f"127.0.0.1:{free_port()}"
  command = [sys.executable, "-m", "mmjax.main", "--config", "configs/edu/grading.py:runlocal",
             "--workdir", workdir, *cli_overrides(data_dir)]
  processes, logs = [], []
  for index in range(2):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=4",
               MMJAX_COORDINATOR_ADDRESS=address, MMJAX_NUM_PROCESSES="2",
               MMJAX_PROCESS_ID=str(index))
    log = open(tmp_path / f"process_{index}.log", "w+")
    logs.append(log)
    processes.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=log,
                                      stderr=subprocess.STDOUT))
  try:
    codes = [p.wait(timeout=TIMEOUT_S) for p in processes]
  finally:
    for p in processes:
      p.kill()
  outputs = []
  for log in logs:
    log.seek(0)
    outputs.append(log.read()[-3000:])
    log.close()
  assert codes == [0, 0], "\n\n".join(outputs)
  assert "process 1 of 2: 4 local devices, 8 in all" in outputs[1]

  losses = np.array([loss for _, loss in train_losses(workdir)])
  expected = np.array([loss for _, loss in train_losses(reference)])
  assert len(losses) == 5
  np.testing.assert_allclose(losses, expected, atol=1e-5, rtol=0)
  assert_trees_close(final_params(reference), final_params(workdir), atol=1e-5)


def test_distributed_settings_come_from_the_environment_then_the_config():
  import pytest

  from mmjax.config import ConfigError
  from mmjax.train import distributed

  from conftest import load_config

  config = load_config("configs/edu/grading.py", "runlocal")
  assert distributed.settings(config, {}) is None  # one process
  assert distributed.settings(config, {"MMJAX_DISTRIBUTED": "auto"}) == {}
  env = {"MMJAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "MMJAX_NUM_PROCESSES": "4",
         "MMJAX_PROCESS_ID": "3", "MMJAX_LOCAL_DEVICE_IDS": "0,1"}
  assert distributed.settings(config, env) == dict(
      coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3,
      local_device_ids=[0, 1])
  config.distributed.coordinator_address = "10.0.0.2:99"
  config.distributed.num_processes = 2
  with pytest.raises(ConfigError, match=r"'process_id' is needed"):
    distributed.settings(config, {})
  config.distributed.process_id = 2
  with pytest.raises(ConfigError, match=r"process_id 2 is not in 0..1"):
    distributed.settings(config, {})
  config.distributed.process_id = 1
  assert distributed.settings(config, {})["coordinator_address"] == "10.0.0.2:99"
