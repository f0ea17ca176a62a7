"""Command line: `mmjax [train|eval] --config FILE[:ARG] --workdir DIR [--config.x.y=v ...]`.

Also `python -m mmjax.main ...`. `train` (the default) resumes from the newest
checkpoint in DIR; `eval` evaluates it. Mistakes in the command line (a missing config
file, an unknown config field, a value of the wrong type) end with one line on stderr
naming what is wrong, and exit status 2.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from mmjax.config import ConfigError, config_from_file, did_you_mean

COMMANDS = ("train", "eval")

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config: path/to/config.py[:arg]. Fields can be overridden "
    "with --config.field=value.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")

log = logging.getLogger("mmjax")


def _fail(message: str) -> None:
  print(f"mmjax: error: {message}", file=sys.stderr)
  sys.exit(2)


def _flag_values(argv: list[str], name: str) -> list[tuple[str, str]]:
  """(flag, value) for `--name=v` / `--name v` and every `--name.sub=v` in argv."""
  found = []
  for i, arg in enumerate(argv):
    if not arg.startswith(f"--{name}"):
      continue
    flag, eq, value = arg[2:].partition("=")
    if flag != name and not flag.startswith(f"{name}."):
      continue
    if not eq:
      value = argv[i + 1] if i + 1 < len(argv) else ""
    found.append((flag, value))
  return found


def load_config_file(spec: str):
  """Runs `get_config(arg)` of `path[:arg]`, with one-line errors for a missing file."""
  path, _, arg = spec.partition(":")
  return config_from_file(path, arg, where="--config: ")


def check_overrides(config, overrides: list[tuple[str, str]]) -> None:
  """Raises ConfigError naming the first `--config.a.b` whose field does not exist."""
  for flag, _ in overrides:
    node, walked = config, "config"
    for key in flag.split(".")[1:]:
      keys = list(node.keys()) if hasattr(node, "keys") else []
      if key not in keys:
        raise ConfigError(f"--{flag}: {walked} has no field '{key}'{did_you_mean(key, keys)}")
      node, walked = node[key], f"{walked}.{key}"


def parse_flags(argv: list[str]) -> list[str]:
  specs = _flag_values(argv, "config")
  spec = next((value for flag, value in specs if flag == "config"), None)
  try:
    if spec is None:
      raise ConfigError("--config is required: --config configs/<area>/<experiment>.py[:arg]")
    check_overrides(load_config_file(spec), [s for s in specs if s[0] != "config"])
    rest = flags.FLAGS(argv)
  except ConfigError as e:
    _fail(str(e))
  except flags.Error as e:
    _fail(str(e).splitlines()[0])
  if not _WORKDIR.value:
    _fail("--workdir is required: the directory for checkpoints, logs and results")
  if len(rest) > 2 or (len(rest) == 2 and rest[1] not in COMMANDS):
    _fail(f"unknown command {' '.join(rest[1:])!r}; expected one of {', '.join(COMMANDS)}")
  return rest


def main(argv: list[str]) -> None:
  command = argv[1] if len(argv) > 1 else "train"
  # mmjax reports at INFO; libraries only warnings (at INFO, orbax logs every file it
  # writes). absl.app turns INFO on for everything, so set both explicitly.
  from absl import logging as absl_logging  # noqa: PLC0415
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("mmjax").setLevel(logging.INFO)
  # Imported here, not at the top: they import jax, and --help should stay fast.
  from mmjax.train import distributed, loop  # noqa: PLC0415

  config, workdir = _CONFIG.value, _WORKDIR.value
  started = time.perf_counter()
  try:
    distributed.initialize(config)  # several processes: before any device is touched
    if command == "train":
      results = loop.train(config, workdir)
    else:
      results = loop.evaluate(config, workdir)
  except ConfigError as e:
    _fail(str(e))
  if results:
    name, value = loop.headline(config, results)
    minutes = (time.perf_counter() - started) / 60
    print(f"\nResults in {os.path.abspath(workdir)} ({command} took {minutes:.1f} min):")
    print(f"  eval.json      {name} = {value:.4f}  (and every metric of every evaluation)")
    print("  metrics.jsonl  training curves; tensorboard/ for TensorBoard; checkpoints/")
    from mmjax.evaluate.scienceqa import format_breakdown  # noqa: PLC0415
    table = format_breakdown(results)  # ScienceQA's groups, when the run reports them
    if table:
      print("\n" + table)


def run() -> None:
  """Console-script entry point (`mmjax ...`)."""
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
