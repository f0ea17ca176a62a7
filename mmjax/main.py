"""Command line: `mmjax [train|eval] --config FILE[:ARG] --workdir DIR [--config.x.y=v ...]`.

Also `python -m mmjax.main ...`. `train` (the default) resumes from the newest
checkpoint in DIR (after a kill -9 too: the result is bit-identical to an uninterrupted
run); `eval` evaluates it, or with `--checkpoint best` early stopping's best checkpoint
(without --config, eval reads the config from `DIR/config.json`).
A training step with a non-finite loss or gradient ends the run with one line naming
the step, the loss terms and the first non-finite gradient, and exit status 1; the last
good checkpoint stays (`--config.skip_nonfinite_steps=True` skips such updates instead).

  mmjax export --workdir DIR [--quantize int8] [--export_dir OUT] [--platforms cpu,cuda]
  mmjax predict --workdir DIR --image a.png --text "What is 3 + 4?"
  mmjax predict --workdir DIR --jsonl inputs.jsonl

  mmjax eval --workdir A --workdir B [--workdir C ...] [--out DIR]
  mmjax soup --workdir A --workdir B [...] --out DIR [--greedy [--greedy_metric M]]

`eval` with several workdirs evaluates the ensemble that averages their logits, and each
run alone (`DIR/eval_ensemble.json`, DIR the first workdir unless --out); `soup` writes the
average of their weights as a new workdir --out, which `eval`, `export` and `predict` read
like any run, and evaluates it (see mmjax/ensemble.py). Both rebuild each run from its
`config.json`; --config, if given, only supplies the evaluation setup (`config.evals`,
`config.data.data_dir`).

`export` writes the newest checkpoint of DIR as a `jax.export` artifact with its
tokenizer and preprocessing (`DIR/export`, see mmjax/export.py; the config comes from
`DIR/config.json` unless --config is given); `predict` loads it with `mmjax.serving`
(no training code) and prints the answer and its probabilities, or for --jsonl (rows
{"image": path relative to the file, "text": ...}) one JSON line per row.

Mistakes in the command line (a missing config file, an unknown config field, a value of
the wrong type, a missing export or image) end with one line on stderr naming what is
wrong, and exit status 2.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from mmjax.config import ConfigError, config_from_file, did_you_mean

COMMANDS = ("train", "eval", "export", "predict", "soup")
# Commands that read their config from `<workdir>/config.json` (or need none).
NO_CONFIG_COMMANDS = ("eval", "export", "predict", "soup")
# Commands that take several --workdir (an ensemble, a soup).
MULTI_WORKDIR_COMMANDS = ("eval", "soup")

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config: path/to/config.py[:arg]. Fields can be overridden "
    "with --config.field=value.", lock_config=True)
_WORKDIR = flags.DEFINE_multi_string(
    "workdir", None, "Directory for checkpoints, logs and results; eval (an ensemble) and "
    "soup take several.")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "latest", ["latest", "best"],
                                "eval, soup: the newest checkpoint or early stopping's best.")
_OUT = flags.DEFINE_string("out", None, "soup: the new workdir (required); eval with several "
                           "--workdir: where eval_ensemble.json goes (default the first).")
_GREEDY = flags.DEFINE_bool("greedy", False, "soup: rank the runs by --greedy_metric and add "
                            "each only if the soup's value does not drop.")
_GREEDY_METRIC = flags.DEFINE_string("greedy_metric", "validation/accuracy",
                                     "soup --greedy: '<split>/<metric>', higher is better.")
_EXPORT_DIR = flags.DEFINE_string(
    "export_dir", None, "export/predict: the export directory (default <workdir>/export).")
_QUANTIZE = flags.DEFINE_enum("quantize", "none", ["none", "int8"],
                              "export: weight-only quantization of the exported weights.")
_PLATFORMS = flags.DEFINE_list("platforms", None, "export: platforms to lower for, e.g. "
                               "cpu,cuda (default: this machine's).")
_IMAGE = flags.DEFINE_string("image", None, "predict: an image file.")
_TEXT = flags.DEFINE_string("text", None, "predict: the text (question) for --image.")
_JSONL = flags.DEFINE_string("jsonl", None, "predict: a JSONL file of {\"image\": path "
                             "relative to the file, \"text\": ...} rows.")

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
  command = next((arg for arg in argv[1:] if arg in COMMANDS), None)
  try:
    if spec is None and command not in NO_CONFIG_COMMANDS:
      raise ConfigError("--config is required: --config configs/<area>/<experiment>.py[:arg]")
    if spec is not None:
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
  command = rest[1] if len(rest) == 2 else "train"
  if len(_WORKDIR.value) > 1 and command not in MULTI_WORKDIR_COMMANDS:
    _fail(f"--workdir: {command} takes one workdir (given {len(_WORKDIR.value)}); only eval "
          "(an ensemble) and soup take several")
  if command == "soup" and not _OUT.value:
    _fail("soup: --out DIR is required (the new workdir the averaged weights go to)")
  return rest


def run_export(workdir: str) -> None:
  from mmjax import export  # noqa: PLC0415

  quantize = None if _QUANTIZE.value == "none" else _QUANTIZE.value
  try:
    report = export.export(workdir, _EXPORT_DIR.value, quantize=quantize,
                           config=_CONFIG.value, platforms=_PLATFORMS.value)
  except ConfigError as e:
    _fail(str(e))
  print(f"Exported step {report['step']} of {os.path.abspath(workdir)} "
        f"({'int8 weights' if quantize else 'float32 weights'}) to {report['directory']}:")
  for name, size in report["sizes"].items():
    print(f"  {name:20s} {size / 1024:9.1f} KiB")
  print(f"  {'total':20s} {report['total_bytes'] / 1024:9.1f} KiB")


def _format_prediction(result: dict) -> str:
  lines = [result["prediction"]]
  ranked = sorted(result["probabilities"].items(), key=lambda kv: -kv[1])
  lines += [f"  {name:12s} {p:.4f}" for name, p in ranked]
  others = [f"{head}: {out['prediction']} ({out['probabilities'][out['prediction']]:.2f})"
            for head, out in result["heads"].items()
            if out["probabilities"] != result["probabilities"]]
  if others:
    lines.append("  other heads: " + ", ".join(others))
  return "\n".join(lines)


def read_jsonl(path: str) -> tuple[list[str], list[str]]:
  """(image paths, texts) of a JSONL file of {"image": path relative to the file, "text"}."""
  if not os.path.isfile(path):
    _fail(f"--jsonl: file not found: {path}")
  images, texts = [], []
  base = os.path.dirname(os.path.abspath(path))
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        _fail(f"{path}:{number}: not valid JSON ({e.msg})")
      if not isinstance(row, dict):
        _fail(f"{path}:{number}: expected an object with \"image\" and \"text\"")
      for field in ("image", "text"):
        if not isinstance(row.get(field), str):
          _fail(f"{path}:{number}: field \"{field}\" is missing or not a string")
      image = os.path.join(base, row["image"])
      if not os.path.isfile(image):
        _fail(f"{path}:{number}: field \"image\": file not found: {image}")
      images.append(image)
      texts.append(row["text"])
  if not images:
    _fail(f"--jsonl: {path} has no rows")
  return images, texts


def run_predict(workdir: str) -> None:
  from mmjax import serving  # noqa: PLC0415

  if bool(_JSONL.value) == bool(_IMAGE.value or _TEXT.value):
    _fail("predict: give either --image FILE --text TEXT or --jsonl FILE")
  if _JSONL.value:
    images, texts = read_jsonl(_JSONL.value)
  else:
    if not _IMAGE.value or _TEXT.value is None:
      _fail("predict: --image and --text go together")
    if not os.path.isfile(_IMAGE.value):
      _fail(f"--image: file not found: {_IMAGE.value}")
    images, texts = [_IMAGE.value], [_TEXT.value]
  try:
    predictor = serving.load(_EXPORT_DIR.value or os.path.join(workdir, "export"))
    results = []
    for start in range(0, len(images), 256):
      results += predictor.predict(images[start:start + 256], texts[start:start + 256])
  except serving.ExportError as e:
    _fail(str(e))
  if _JSONL.value:
    for image, text, result in zip(images, texts, results, strict=True):
      print(json.dumps(dict(image=image, text=text, **result)))
  else:
    print(_format_prediction(results[0]))


def run_ensemble(command: str, workdirs: list[str]) -> None:
  """`eval` with several workdirs (mean-of-logits ensemble) or `soup`."""
  from mmjax import ensemble  # noqa: PLC0415
  from mmjax.train import distributed, loop  # noqa: PLC0415

  started = time.perf_counter()
  try:
    distributed.initialize(_CONFIG.value or ensemble.member_config(workdirs[0]))
    if command == "soup":
      report = ensemble.make_soup(workdirs, _OUT.value, setup=_CONFIG.value,
                                  checkpoint=_CHECKPOINT.value, greedy=_GREEDY.value,
                                  metric=_GREEDY_METRIC.value)
      config = ensemble.member_config(_OUT.value)
      results = loop.evaluate(config, _OUT.value)
    else:
      report = ensemble.evaluate_ensemble(workdirs, _CONFIG.value,
                                          checkpoint=_CHECKPOINT.value, out_dir=_OUT.value)
  except ConfigError as e:
    _fail(str(e))
  minutes = (time.perf_counter() - started) / 60
  if command == "soup":
    name, value = loop.headline(config, results)
    kept = [m for m in report["members"] if m.get("kept", True)]
    print(f"\nSoup ({report['method']}) of {len(kept)} of {len(report['members'])} runs in "
          f"{os.path.abspath(_OUT.value)} ({minutes:.1f} min):")
    for member in report["members"]:
      held_out = (f"  {report['metric']} = {member['metric']:.4f}"
                  f"{'' if member['kept'] else '  (left out)'}" if "metric" in member else "")
      print(f"  {member['workdir']}  step {member['step']}{held_out}")
    print(f"  eval.json      {name} = {value:.4f}  (soup.json: members; checkpoints/)")
    return
  name = report["headline"]
  line = report["summary"].get(name)
  print(f"\nEnsemble (mean of logits) of {len(workdirs)} runs ({minutes:.1f} min), {name}:")
  for member, value in zip(report["members"], line["members"] if line else [], strict=False):
    print(f"  {value:.4f}  {member['workdir']} (step {member['step']})")
  if line:
    print(f"  {line['ensemble']:.4f}  ensemble")
  print(f"  every metric of the ensemble and of each run: {report['path']}")


def main(argv: list[str]) -> None:
  command = argv[1] if len(argv) > 1 else "train"
  workdirs = _WORKDIR.value
  if command == "predict":  # serving only: no training code, no config
    run_predict(workdirs[0])
    return
  # mmjax reports at INFO; libraries only warnings (at INFO, orbax logs every file it
  # writes). absl.app turns INFO on for everything, so set both explicitly.
  from absl import logging as absl_logging  # noqa: PLC0415
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("mmjax").setLevel(logging.INFO)
  if command == "export":
    run_export(workdirs[0])
    return
  if command == "soup" or len(workdirs) > 1:
    run_ensemble(command, workdirs)
    return
  # Imported here, not at the top: they import jax, and --help should stay fast.
  from mmjax.analysis import run_config  # noqa: PLC0415
  from mmjax.train import distributed, loop  # noqa: PLC0415

  config, workdir = _CONFIG.value, workdirs[0]
  started = time.perf_counter()
  try:
    config = config if config is not None else run_config(workdir)  # eval: the run's own
    distributed.initialize(config)  # several processes: before any device is touched
    if command == "train":
      results = loop.train(config, workdir)
    else:
      results = loop.evaluate(config, workdir, checkpoint=_CHECKPOINT.value)
  except ConfigError as e:
    _fail(str(e))
  except loop.NonFiniteError as e:
    print(f"mmjax: error: {e}", file=sys.stderr)
    sys.exit(1)
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
