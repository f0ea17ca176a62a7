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
# # Predictions of a classification run
#
# Restores the newest checkpoint of a classification run (`mmjax.analysis.load_run`),
# predicts every example of one split with the run's own evaluation batches and predict
# step (`mmjax.analysis.predictions`), and shows where the main head goes wrong: its
# confusion matrix, the class pairs it confuses most, and the misclassified examples
# themselves (image, question, true and predicted class). Works for any classification
# run, e.g. `configs/edu/grading.py` or `configs/edu/shapes_relational.py`. Headless:
# `WORKDIR=runs/grading python notebooks/predictions.py`; the figures are also saved
# under `<workdir>/plots/`.

# %% tags=["parameters"]
import os

workdir = os.environ.get("WORKDIR", "runs/grading")
data_dir = os.environ.get("DATA_DIR") or None  # None: where the run's config.json says
split = os.environ.get("SPLIT", "test")
num_shown = 12  # misclassified examples to show, the most confident mistakes first

# %%
import textwrap

import matplotlib.pyplot as plt  # without a display, matplotlib falls back to Agg
import numpy as np

from mmjax import analysis

run = analysis.load_run(workdir, data_dir)
preds = analysis.predictions(run, split)
names = preds.class_names
os.makedirs(os.path.join(workdir, "plots"), exist_ok=True)
print(f"step {run.step} | main head '{preds.head}' | {len(names)} classes | "
      f"fusion {run.config.model.fusion.kind}")
print(f"{split} accuracy {preds.accuracy:.4f} on {len(preds.label)} examples, "
      f"{len(preds.misclassified)} misclassified")

# %% [markdown]
# ## Confusion matrix
#
# Rows are the true classes, columns the predicted ones; the numbers are counts and the
# colour is the share of each true class (a row sums to 1), so rare classes show as
# clearly as common ones. Recall is the diagonal over the row, precision the diagonal
# over the column.

# %%
matrix = preds.confusion_matrix()
support = matrix.sum(axis=1)
predicted = matrix.sum(axis=0)
width = max(len(name) for name in names) + 2
print(f"{'class':{width}s}{'support':>9s}{'recall':>9s}{'precision':>11s}")
for k, name in enumerate(names):
  recall = matrix[k, k] / support[k] if support[k] else float("nan")
  precision = matrix[k, k] / predicted[k] if predicted[k] else float("nan")
  print(f"{name:{width}s}{support[k]:9d}{recall:9.3f}{precision:11.3f}")

confused = [(matrix[t, p], names[t], names[p]) for t in range(len(names))
            for p in range(len(names)) if t != p and matrix[t, p]]
print("\nmost confused (true -> predicted):")
for count, true, pred in sorted(confused, reverse=True)[:5]:
  print(f"  {true} -> {pred}: {count}")

size = 2.5 + 0.45 * len(names)
fig, ax = plt.subplots(figsize=(size + 1.5, size))
shares = matrix / np.maximum(support[:, None], 1)
shown = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
for (row, col), count in np.ndenumerate(matrix):
  if count:
    ax.text(col, row, str(count), ha="center", va="center", fontsize=7,
            color="white" if shares[row, col] > 0.5 else "black")
ax.set_xticks(range(len(names)), names, rotation=60 if len(names) > 4 else 0,
              ha="right" if len(names) > 4 else "center", fontsize=8)
ax.set_yticks(range(len(names)), names, fontsize=8)
ax.set_xlabel("predicted")
ax.set_ylabel("true")
ax.set_title(f"{split}: '{preds.head}', accuracy {preds.accuracy:.3f}")
fig.colorbar(shown, ax=ax, fraction=0.046, label="share of the true class")
fig.tight_layout()
fig.savefig(os.path.join(workdir, "plots", f"predictions_confusion_{split}.png"), dpi=100)
plt.show()

# %% [markdown]
# ## Misclassified examples
#
# The mistakes the model is surest of first (highest probability of the wrong class):
# the most telling ones, whether they are hard examples, label noise or a blind spot.
# Images are shown as the model saw them (after any resizing).

# %%
wrong = preds.misclassified
confidence = preds.probabilities[wrong, preds.prediction[wrong]]
chosen = wrong[np.argsort(-confidence, kind="stable")][:num_shown]
for row in chosen:
  text = f" {preds.texts[row]!r}" if preds.texts else ""
  print(f"#{preds.index[row]}{text}: true {names[preds.label[row]]}, predicted "
        f"{names[preds.prediction[row]]} (p={preds.probabilities[row, preds.prediction[row]]:.2f})")

if len(chosen) and preds.images is not None:
  cols = min(len(chosen), 4)
  rows = -(-len(chosen) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 4.0 * rows), squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  for ax, row in zip(axes.flat, chosen, strict=False):
    image = preds.images[row]
    ax.imshow(image[..., 0] if image.shape[-1] == 1 else image,
              cmap="gray" if image.shape[-1] == 1 else None, interpolation="nearest")
    lines = (textwrap.wrap(preds.texts[row], 34, max_lines=3, placeholder=" ...")
             if preds.texts else [])
    lines += [f"true: {names[preds.label[row]]}",
              f"predicted: {names[preds.prediction[row]]} "
              f"({preds.probabilities[row, preds.prediction[row]]:.2f})"]
    ax.set_title("\n".join(lines), fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "plots", f"predictions_errors_{split}.png"), dpi=100)
  plt.show()
elif not len(chosen):
  print(f"no misclassified example in {split}")
