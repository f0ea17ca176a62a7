import ml_collections
import numpy as np
import pytest

from mmjax.config import ConfigError
from mmjax.train.optimizer import build_schedule


def schedule_config(**kw):
  return ml_collections.ConfigDict(dict(dict(warmup_steps=10, decay="cosine", end_factor=0.0),
                                        **kw))


def test_warmup_then_cosine():
  schedule = build_schedule(schedule_config(), 1.0, 110)
  assert float(schedule(0)) == 0.0
  assert float(schedule(5)) == pytest.approx(0.5)
  assert float(schedule(10)) == pytest.approx(1.0)
  assert float(schedule(60)) == pytest.approx(0.5, abs=1e-6)  # half way down the cosine
  assert float(schedule(110)) == pytest.approx(0.0, abs=1e-7)
  values = np.array([float(schedule(s)) for s in range(10, 111)])
  assert np.all(np.diff(values) <= 1e-7)


def test_linear_and_constant():
  linear = build_schedule(schedule_config(decay="linear", end_factor=0.1), 2.0, 110)
  assert float(linear(60)) == pytest.approx(2.0 - 0.5 * 1.8)
  constant = build_schedule(schedule_config(decay="constant"), 2.0, 110)
  assert float(constant(100)) == pytest.approx(2.0)


def test_bad_schedule():
  with pytest.raises(ConfigError, match="warmup_steps=10 must be below"):
    build_schedule(schedule_config(), 1.0, 10)
  with pytest.raises(ConfigError, match="unknown decay 'step'"):
    build_schedule(schedule_config(decay="step"), 1.0, 100)
