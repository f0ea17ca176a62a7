r"""Sweep runner: an ablation as a grid of config overrides x seeds -> a results table and plot.

  python -m experiments.sweep experiments/ablations/fusion.py [--parallel N] [--out DIR]

A sweep file is a Python file that defines `SWEEPS`, a list of `Sweep`s run in order (a
later one may read an earlier one's workdirs, e.g. fine-tuning from pre-training runs).
A `Sweep` names a base config, its rows (`Run`s: a label plus config arg and
`--config.*` overrides; `grid()` builds them from a product of values) and the seeds.
Every (row, seed) is one `python -m mmjax.main` run in its own workdir
`<out>/<sweep>/<row>/seed_<seed>`, with its output in `run.log` there.

The runner skips runs that finished (their `eval.json` is at the config's last step),
resumes interrupted ones (mmjax.main restarts from the newest checkpoint), runs up to
`--parallel` at once, shows a progress bar over runs, and writes into `<out>`:

  results.csv  one line per run: sweep, run, seed, status, workdir, minutes, then every
               scalar metric: eval.json's `<split>/<name>`, `train/steps_per_sec`
               (median over the logged windows), `params/trainable` and `params/total`.
  results.md   per sweep, a Markdown table of the sweep's `metrics`, mean ± std over
               the seeds that finished (sample std; `mmjax.analysis.summarize`, which
               the ablation_tables notebook also uses), and the command.
  results.png  per sweep, a bar chart of its first metric with ±std error bars.

`{out}` and `{seed}` in a row's config arg or overrides are replaced by the output
directory and the run's seed. `--set key=value` adds an override to every run (e.g.
`--set data.data_dir=/data/tfds`), `--arg` appends to every config arg (e.g. `runlocal`
for a smoke run), `--seeds` and `--only` select runs, `--dry-run` prints the commands.
The exit status is 1 when a run failed (its log's last lines are printed).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import importlib.util
import itertools
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mmjax import analysis

FIXED_COLUMNS = analysis.RESULT_COLUMNS


@dataclasses.dataclass(frozen=True)
class Run:
  """One row of a sweep: `name` (its label and directory), `arg` (appended to the config
  arg, "key=value,..."), `overrides` ({"model.fusion.kind": "late"} -> --config.model...)."""

  name: str
  arg: str = ""
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Sweep:
  """Rows x seeds of one base config. `metrics` are the table's columns (eval.json's
  "<split>/<name>" or the runner's own, e.g. "train/steps_per_sec"); the first is plotted."""

  name: str
  config: str
  rows: Sequence[Run]
  seeds: Sequence[int] = (0,)
  metrics: Sequence[str] = ("test/accuracy",)
  arg: str = ""
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    names = [row.name for row in self.rows]
    if not names or len(set(names)) != len(names):
      raise ValueError(f"sweep '{self.name}': rows need distinct names, got {names}")


def grid(name: str = "", arg: str = "", **axes: Sequence[Any]) -> list[Run]:
  """Rows for every combination of `axes` ({"model__fusion__kind": [...]}, `__` for `.`).

  `name` is a format string over the axes' short names (the part after the last `__`),
  default: the values joined by "_".
  """
  keys = list(axes)
  rows = []
  for values in itertools.product(*(axes[k] for k in keys)):
    short = {k.rsplit("__", 1)[-1]: v for k, v in zip(keys, values, strict=True)}
    label = name.format(**short) if name else "_".join(str(v) for v in values)
    rows.append(Run(label, arg, {k.replace("__", "."): v for k, v in zip(keys, values,
                                                                         strict=True)}))
  return rows


@dataclasses.dataclass(frozen=True)
class Job:
  sweep: Sweep
  run: Run
  seed: int
  workdir: str
  command: tuple[str, ...]


def load_sweeps(path: str) -> list[Sweep]:
  """`SWEEPS` of a sweep file, with one-line errors for a missing file or field."""
  if not os.path.isfile(path):
    raise SystemExit(f"sweep: error: sweep file {path} does not exist")
  spec = importlib.util.spec_from_file_location("_sweep_file", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  sweeps = getattr(module, "SWEEPS", None)
  if not sweeps or not all(hasattr(s, "rows") and hasattr(s, "config") for s in sweeps):
    raise SystemExit(f"sweep: error: {path} must define SWEEPS, a non-empty list of Sweep")
  return list(sweeps)


def _substitute(value: Any, out: str, seed: int) -> Any:
  return value.format(out=out, seed=seed) if isinstance(value, str) else value


def _join_args(*args: str) -> str:
  return ",".join(a for a in args if a)


def make_jobs(sweeps: Iterable[Sweep], out: str, *, extra_arg: str = "",
              extra_overrides: Sequence[tuple[str, str]] = (), seeds: Sequence[int] | None = None,
              only: Sequence[str] = ()) -> list[Job]:
  """Every (sweep, row, seed) as a command line, in sweep, row, seed order."""
  jobs = []
  for sweep in sweeps:
    if only and sweep.name not in only:
      continue
    for run in sweep.rows:
      for seed in sweep.seeds:
        if seeds is not None and seed not in seeds:
          continue
        arg = _substitute(_join_args(sweep.arg, run.arg, extra_arg), out, seed)
        overrides = {**sweep.overrides, **run.overrides}
        workdir = os.path.join(out, sweep.name, run.name, f"seed_{seed}")
        command = [sys.executable, "-m", "mmjax.main", "--config",
                   sweep.config + (f":{arg}" if arg else ""), "--workdir", workdir,
                   f"--config.seed={seed}"]
        command += [f"--config.{k}={_substitute(v, out, seed)}" for k, v in overrides.items()]
        command += [f"--config.{k}={v}" for k, v in extra_overrides]
        jobs.append(Job(sweep, run, seed, workdir, tuple(command)))
  return jobs


def finished(workdir: str) -> bool:
  """Whether the run in `workdir` trained to its last step (or stopped early) and wrote its
  evaluation."""
  try:
    with open(os.path.join(workdir, "eval.json"), encoding="utf-8") as f:
      record = json.load(f)
    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
      total = json.load(f)["total_steps"]
    stopped = (record.get("early_stopping") or {}).get("stopped", False)
    return record["step"] >= total or stopped
  except (OSError, ValueError, KeyError):
    return False


def execute(job: Job) -> tuple[Job, bool, float]:
  """Runs one job to completion (resuming what its workdir holds); (job, ok, minutes)."""
  os.makedirs(job.workdir, exist_ok=True)
  started = time.perf_counter()
  with open(os.path.join(job.workdir, "run.log"), "a", encoding="utf-8") as log:
    log.write("$ " + " ".join(job.command) + "\n")
    log.flush()
    done = subprocess.run(job.command, stdout=log, stderr=subprocess.STDOUT, check=False)
  minutes = (time.perf_counter() - started) / 60
  ok = done.returncode == 0 and finished(job.workdir)
  if ok:  # minutes of the invocation that finished it (a resumed run: its last part)
    with open(os.path.join(job.workdir, "sweep.json"), "w", encoding="utf-8") as f:
      json.dump(dict(minutes=minutes, command=list(job.command)), f, indent=2)
  return job, ok, minutes


def run_metrics(workdir: str) -> dict[str, float]:
  """The scalar metrics of one finished run (see the module docstring)."""
  metrics: dict[str, float] = {}
  with open(os.path.join(workdir, "eval.json"), encoding="utf-8") as f:
    results = json.load(f)
  for split, values in results.items():
    if isinstance(values, dict):
      metrics.update({f"{split}/{k}": float(v) for k, v in values.items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool)})
  rates = []
  path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      rates = [r["train/steps_per_sec"] for r in map(json.loads, filter(str.strip, f))
               if "train/steps_per_sec" in r]
  if rates:
    metrics["train/steps_per_sec"] = float(sorted(rates)[len(rates) // 2])
  path = os.path.join(workdir, "compile.json")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      report = json.load(f)
    for key in ("trainable", "total"):
      if f"params_{key}" in report:
        metrics[f"params/{key}"] = float(report[f"params_{key}"])
  path = os.path.join(workdir, "sweep.json")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      metrics["minutes"] = float(json.load(f)["minutes"])
  return metrics


def collect(jobs: Sequence[Job]) -> list[dict[str, Any]]:
  """One record per job: the fixed columns and, for finished runs, their metrics."""
  records = []
  for job in jobs:
    record: dict[str, Any] = dict(sweep=job.sweep.name, run=job.run.name, seed=job.seed,
                                  workdir=job.workdir)
    if finished(job.workdir):
      record.update(status="done", **run_metrics(job.workdir))
    else:
      record["status"] = "failed"
    records.append(record)
  return records


def write_csv(records: Sequence[Mapping[str, Any]], path: str) -> None:
  metric_names = sorted({k for r in records for k in r} - set(FIXED_COLUMNS))
  with open(path + ".tmp", "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=[*FIXED_COLUMNS, *metric_names], restval="")
    writer.writeheader()
    writer.writerows(records)
  os.replace(path + ".tmp", path)


def table(sweep: Sweep, rows: Sequence[analysis.Summary]) -> str:
  """The Markdown table of one sweep: a row per `Run`, a column per metric (mean ± std
  over seeds; "(n=k)" when only k of the row's runs have the value)."""
  lines = [f"| {sweep.name} | " + " | ".join(sweep.metrics) + " |",
           "|---" * (len(sweep.metrics) + 1) + "|"]
  by_name = {row.run: row for row in rows if row.sweep == sweep.name}
  # One number of decimals per column, by its largest mean (analysis.decimals).
  digits = {m: analysis.decimals(r.mean.get(m, math.nan) for r in by_name.values())
            for m in sweep.metrics}
  for run in sweep.rows:
    row = by_name.get(run.name)
    if row is None:
      continue
    cells = []
    for metric in sweep.metrics:
      count = row.count.get(metric, 0)
      cell = analysis.format_mean_std(row.mean.get(metric, math.nan),
                                      row.std.get(metric, math.nan), count, digits[metric])
      cells.append(cell + (f" (n={count})" if 0 < count < len(row.seeds) + row.failed else ""))
    lines.append(f"| {run.name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def summaries(sweeps: Sequence[Sweep], csv_path: str) -> list[analysis.Summary]:
  """mmjax.analysis's per-row summaries of results.csv, over every sweep's metrics."""
  results = analysis.read_results(csv_path)
  metrics = sorted({m for s in sweeps for m in s.metrics} & set(results.columns))
  return analysis.summarize(results, metrics)


def write_markdown(sweeps: Sequence[Sweep], rows: Sequence[analysis.Summary], path: str,
                   command: str) -> str:
  parts = [f"Command: `{command}`", ""]
  for sweep in sweeps:
    mine = [r for r in rows if r.sweep == sweep.name]
    if mine:
      seeds = sorted({seed for r in mine for seed in r.seeds})
      parts += [f"## {sweep.name}: `{sweep.config}`, seeds {', '.join(map(str, seeds))}", "",
                table(sweep, mine), ""]
  text = "\n".join(parts)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)
  return text


def write_plot(sweeps: Sequence[Sweep], rows: Sequence[analysis.Summary], path: str) -> bool:
  """Bar charts of each sweep's first metric (mean ± std); False without matplotlib."""
  try:
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
  except ImportError:
    return False
  shown = [s for s in sweeps if any(r.sweep == s.name for r in rows)]
  if not shown:
    return False
  fig, axes = plt.subplots(1, len(shown), figsize=(max(4.0, 1.1 * max(len(s.rows) for s in shown))
                                                   * len(shown), 4.0), squeeze=False)
  for ax, sweep in zip(axes[0], shown, strict=True):
    metric = sweep.metrics[0]
    mine = [r for r in rows if r.sweep == sweep.name and r.count.get(metric, 0)]
    ax.bar(range(len(mine)), [r.mean[metric] for r in mine],
           yerr=[0.0 if math.isnan(r.std[metric]) else r.std[metric] for r in mine],
           capsize=4, color="tab:blue", alpha=0.8)
    ax.set_xticks(range(len(mine)), [r.run for r in mine], rotation=30, ha="right")
    ax.set_title(f"{sweep.name}: {metric}")
    ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m experiments.sweep", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("sweep_file")
  parser.add_argument("--out", help="output directory (default runs/sweeps/<file name>)")
  parser.add_argument("--parallel", type=int, default=1, help="runs at once (default 1)")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="--config.KEY=VALUE for every run (repeatable)")
  parser.add_argument("--arg", default="", help="appended to every run's config arg")
  parser.add_argument("--seeds", help="only these seeds, e.g. 0,1")
  parser.add_argument("--only", action="append", default=[], metavar="SWEEP",
                      help="only this sweep of the file (repeatable)")
  parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
  args = parser.parse_args(argv)
  if args.parallel < 1:
    parser.error(f"--parallel: expected a positive integer, got {args.parallel}")
  for item in args.set:
    if "=" not in item:
      parser.error(f"--set {item}: expected KEY=VALUE, e.g. data.data_dir=/data/tfds")
  try:
    args.seeds = None if args.seeds is None else [int(s) for s in args.seeds.split(",")]
  except ValueError:
    parser.error(f"--seeds {args.seeds}: expected comma-separated integers, e.g. 0,1")
  return args


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parse_args(argv)
  sweeps = load_sweeps(args.sweep_file)
  unknown = sorted(set(args.only) - {s.name for s in sweeps})
  if unknown:
    raise SystemExit(f"sweep: error: --only {', '.join(unknown)}: {args.sweep_file} has sweeps "
                     f"{', '.join(s.name for s in sweeps)}")
  out = args.out or os.path.join(
      "runs", "sweeps", os.path.splitext(os.path.basename(args.sweep_file))[0])
  overrides = [tuple(item.split("=", 1)) for item in args.set]
  jobs = make_jobs(sweeps, out, extra_arg=args.arg, extra_overrides=overrides,
                   seeds=args.seeds, only=args.only)
  if args.dry_run:
    for job in jobs:
      print(" ".join(job.command))
    return 0
  os.makedirs(out, exist_ok=True)

  from tqdm import tqdm  # noqa: PLC0415

  env_note = ""
  if args.parallel > 1 and "XLA_PYTHON_CLIENT_PREALLOCATE" not in os.environ:
    # Several processes share one accelerator: each takes what it needs, not 75 % of it.
    os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    env_note = " (XLA_PYTHON_CLIENT_PREALLOCATE=false)"
  failed = []
  done_before = sum(finished(j.workdir) for j in jobs)
  print(f"sweep: {len(jobs)} runs into {out}, {done_before} already finished; "
        f"{args.parallel} at once{env_note}", flush=True)
  with tqdm(total=len(jobs), initial=done_before, desc="runs", unit="run",
            dynamic_ncols=True) as bar:
    # Sweeps in order (a later one may read an earlier one's runs); runs within a sweep
    # in parallel.
    for sweep in sweeps:
      todo = [j for j in jobs if j.sweep is sweep and not finished(j.workdir)]
      with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
        futures = [pool.submit(execute, job) for job in todo]
        for future in concurrent.futures.as_completed(futures):
          job, ok, minutes = future.result()
          bar.update(1)
          bar.set_postfix_str(f"{sweep.name}/{job.run.name}/seed_{job.seed} "
                              f"{'done' if ok else 'FAILED'} in {minutes:.1f} min")
          if not ok:
            failed.append(job)
  failed.sort(key=jobs.index)
  write_csv(collect(jobs), os.path.join(out, "results.csv"))
  rows = summaries(sweeps, os.path.join(out, "results.csv"))
  command = "python -m experiments.sweep " + " ".join(argv)
  print("\n" + write_markdown(sweeps, rows, os.path.join(out, "results.md"), command))
  plotted = write_plot(sweeps, rows, os.path.join(out, "results.png"))
  print(f"Results in {os.path.abspath(out)}: results.csv, results.md"
        + (", results.png" if plotted else " (no plot: matplotlib is not installed)"))
  for job in failed:
    with open(os.path.join(job.workdir, "run.log"), encoding="utf-8") as f:
      tail = f.read().strip().splitlines()[-3:]
    print(f"FAILED {job.workdir} (see run.log):\n  " + "\n  ".join(tail), file=sys.stderr)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
