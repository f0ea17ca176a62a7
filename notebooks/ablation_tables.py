# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Ablation tables of a sweep
#
# Reads the `results.csv` that `python -m experiments.sweep` writes into its sweep
# directory (one line per run: `sweep`, `run`, `seed`, `status`, `workdir`, `minutes`,
# then one column per metric, e.g. `test/accuracy`, `params/trainable`) and shows, for
# each sub-sweep, one table row per run label (in the order the sweep ran them) with the
# mean ± standard deviation over its seeds of every metric, and the same as bar charts
# with error bars and one dot per seed. Failed runs are counted, never averaged. The
# summaries come from `mmjax.analysis.read_results` / `summarize`. Headless:
# `SWEEP_DIR=runs/sweep python notebooks/ablation_tables.py`; figures are saved under
# `<sweep_dir>/plots/`.

# %% tags=["parameters"]
import os

sweep_dir = os.environ.get("SWEEP_DIR", "runs/sweep")
# The metric columns to show, e.g. ["test/accuracy", "params/trainable"]; None: every
# numeric metric column (METRICS="test/accuracy,minutes" headless).
metrics = [m for m in os.environ.get("METRICS", "").split(",") if m] or None
table_width = 6  # metric columns per printed table (more metrics: further tables)

# %%
import re

import matplotlib.pyplot as plt  # without a display, matplotlib falls back to Agg
import numpy as np

from mmjax import analysis

results = analysis.read_results(sweep_dir)
rows = analysis.summarize(results, metrics)
shown = list(results.metrics if metrics is None else metrics)
sweeps = list(dict.fromkeys(row.sweep for row in rows))  # in order of first appearance
os.makedirs(os.path.join(sweep_dir, "plots"), exist_ok=True)
print(f"{len(results.records)} runs in {len(sweeps)} sub-sweep(s): {', '.join(sweeps)}")
print("metrics:", ", ".join(shown))

# %% [markdown]
# ## Tables
#
# `mean ± std` over the finished seeds (sample standard deviation; a single seed shows
# its value alone, "—" means no finished run reported the metric). `seeds` counts the
# finished runs, `failed` the others.

# %%
for sweep in sweeps:
  print(f"\n== {sweep} ==")
  for start in range(0, len(shown), table_width):
    if start:
      print()
    print(analysis.format_table([row for row in rows if row.sweep == sweep],
                                shown[start:start + table_width]))

failed = [r for r in results.records if r["status"] != "done"]
if failed:
  print("\nnot finished:")
  for record in failed:
    print(f"  {record['sweep']}/{record['run']} seed {record['seed']}: {record['status']} "
          f"({record.get('workdir', '')})")

# %% [markdown]
# ## Bar charts
#
# One figure per sub-sweep, one panel per metric that it measured: the bar is the mean,
# the error bar one standard deviation, the dots the seeds.

# %%
for sweep in sweeps:
  chosen = [row for row in rows if row.sweep == sweep]
  measured = [m for m in shown if any(row.count[m] for row in chosen)]
  if not measured:
    print(f"{sweep}: no finished run has any of the metrics")
    continue
  cols = min(len(measured), 4)
  lines = -(-len(measured) // cols)
  fig, axes = plt.subplots(lines, cols, figsize=(max(3.0, 0.8 * len(chosen) + 1.5) * cols,
                                                 3.6 * lines), squeeze=False)
  for ax in axes.flat[len(measured):]:
    ax.axis("off")
  for ax, metric in zip(axes.flat, measured, strict=False):
    x = np.arange(len(chosen))
    means = np.array([row.mean[metric] for row in chosen])  # NaN (no value): no bar
    errors = np.nan_to_num(np.array([row.std[metric] for row in chosen]))
    ax.bar(x, means, yerr=errors, capsize=4, color="tab:blue", alpha=0.7)
    for k, row in enumerate(chosen):
      values = row.values[metric]
      spread = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else np.zeros(1)
      ax.plot(k + spread[:len(values)], values, "k.", markersize=5)
    ax.set_xticks(x, [row.run for row in chosen], rotation=30 if len(chosen) > 3 else 0,
                  ha="right" if len(chosen) > 3 else "center", fontsize=8)
    ax.set_title(metric, fontsize=9)
  fig.suptitle(f"{sweep}: mean ± std over seeds", fontsize=10)
  fig.tight_layout()
  name = re.sub(r"[^A-Za-z0-9_.-]+", "_", sweep) or "sweep"
  fig.savefig(os.path.join(sweep_dir, "plots", f"{name}.png"), dpi=100)
  plt.show()
