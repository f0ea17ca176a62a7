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
# # Analyse one training run
#
# Reads what `mmjax train` writes into a workdir: `metrics.jsonl` (training curves:
# loss per head, accuracy, learning rate, gradient norm), `eval.json` (final metrics
# per split) and `config.json`. Open it in Jupyter (jupytext pairs it with a notebook),
# or run it headless: `WORKDIR=runs/grading python notebooks/analyze_run.py`; the
# figures are also saved under `<workdir>/plots/`.

# %% tags=["parameters"]
import os

workdir = os.environ.get("WORKDIR", "runs/grading")

# %%
import json

import matplotlib.pyplot as plt  # without a display, matplotlib falls back to Agg
import numpy as np

with open(os.path.join(workdir, "metrics.jsonl")) as f:
  records = [json.loads(line) for line in f if line.strip()]
with open(os.path.join(workdir, "config.json")) as f:
  config = json.load(f)
os.makedirs(os.path.join(workdir, "plots"), exist_ok=True)


def series(name):
  """(steps, values) of one metric across the run."""
  points = [(r["step"], r[name]) for r in records if name in r]
  return tuple(np.array(v) for v in zip(*points, strict=True)) if points else ((), ())


train_names = sorted({k for r in records for k in r if k.startswith("train/")})
print(f"{len(records)} records, steps {records[0]['step']}..{records[-1]['step']}")
print("fusion:", config["model"]["fusion"]["kind"], "| modalities:", config["model"]["modalities"])

# %% [markdown]
# ## Training curves

# %%
panels = [("losses", [n for n in train_names if n.endswith("loss")]),
          ("accuracy", [n for n in train_names if n.endswith("accuracy")]),
          ("learning rate", ["train/learning_rate"]),
          ("gradient norm", ["train/grad_norm"])]
fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5))
for ax, (title, names) in zip(axes, panels, strict=True):
  for name in names:
    steps, values = series(name)
    ax.plot(steps, values, label=name.removeprefix("train/"))
  for split in ("validation", "test"):
    steps, values = series(f"{split}/accuracy")
    if title == "accuracy" and len(steps):
      ax.plot(steps, values, "o--", label=f"{split} accuracy")
  ax.set_title(title)
  ax.set_xlabel("step")
  ax.legend(fontsize=7)
fig.tight_layout()
fig.savefig(os.path.join(workdir, "plots", "curves.png"), dpi=100)
plt.show()

# %% [markdown]
# ## Final evaluation

# %%
eval_path = os.path.join(workdir, "eval.json")
if os.path.exists(eval_path):
  with open(eval_path) as f:
    results = json.load(f)
  splits = [k for k in results if k != "step"]
  names = sorted({k for s in splits for k, v in results[s].items() if isinstance(v, float)})
  print(f"step {results['step']}")
  print(f"{'metric':32s}" + "".join(f"{s:>12s}" for s in splits))
  for name in names:
    print(f"{name:32s}" + "".join(f"{results[s].get(name, float('nan')):12.4f}" for s in splits))

  fig, axes = plt.subplots(1, len(splits), figsize=(3.5 * len(splits), 3.2))
  for ax, split in zip(np.atleast_1d(axes), splits, strict=True):
    matrix = np.array(results[split]["confusion_matrix"])
    ax.imshow(matrix, cmap="Blues")
    for (row, col), count in np.ndenumerate(matrix):
      ax.text(col, row, str(count), ha="center", va="center", fontsize=8)
    ax.set_title(f"{split}: confusion matrix")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "plots", "confusion.png"), dpi=100)
  plt.show()
else:
  print("no eval.json yet: the run has not finished")
