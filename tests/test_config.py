import pytest

from mmjax.config import ConfigError, did_you_mean, modalities, parse_arg


def test_parse_arg_types_and_flags():
  arg = parse_arg("runlocal,steps=7,modalities=image", runlocal=False, steps=0,
                  modalities="image,text", lr=0.1)
  assert arg.runlocal is True
  assert arg.steps == 7
  assert arg.modalities == "image"
  assert arg.lr == 0.1


def test_parse_arg_empty_keeps_defaults():
  arg = parse_arg(None, runlocal=False, steps=3)
  assert (arg.runlocal, arg.steps) == (False, 3)


@pytest.mark.parametrize("text, message", [
    ("runlokal", "config arg 'runlokal' is unknown; did you mean 'runlocal'?"),
    ("steps=abc", "config arg 'steps': expected int, got 'abc'"),
    ("steps", "config arg 'steps' needs a value: steps=..."),
])
def test_parse_arg_errors(text, message):
  with pytest.raises(ConfigError) as info:
    parse_arg(text, runlocal=False, steps=3)
  assert str(info.value) == message


def test_did_you_mean():
  assert did_you_mean("widht", ["width", "depth"]) == "; did you mean 'width'?"
  assert did_you_mean("zzz", ["width"]) == ""


def test_modalities():
  import ml_collections
  config = ml_collections.ConfigDict({"model": {"modalities": "image, text"}})
  assert modalities(config) == ("image", "text")
  config.model.modalities = "image,lidar"
  with pytest.raises(ConfigError, match="unknown modality 'lidar'"):
    modalities(config)
