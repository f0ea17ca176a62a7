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
# # Where the question looks in the image
#
# For a trained image + text run, the attention from the question's tokens to the image
# tokens in every fusion layer, drawn over the image. The model is applied with its
# attention logits sown (`mmjax.analysis.attention_maps`, reading what
# `layers.MultiHeadAttention` sows into the "intermediates" collection); the weights are
# each layer's softmax, so what is drawn is what the layer mixes into the question's tokens.
#
# * `cross_attention` fusion (e.g. `configs/edu/shapes_relational.py`, `configs/edu/grading.py`):
#   the text tokens are the queries and the image tokens ([CLS], then one per patch) the keys.
# * `co_attention`: the text stream's cross-attention to the image stream.
# * `merged`: one self-attention over [fused CLS, image tokens, text tokens]; the rows are the
#   fused [CLS] (what the heads read) and the text tokens, the columns the image tokens. The
#   weights on the image then sum to less than 1 (the rest goes to the text and the fused CLS).
# * `concat` and `late` fusion have no attention between the modalities: the first cell
#   fails with a one-line error saying so.
#
# In `shapes_relational`, head 0 of each fusion layer is trained to put the question's
# [CLS] on the asked object's cell (layer 0) and on the cell of the object the answer
# reports (layer 1); under `merged` the supervised rows are the question's [CLS] in layer 0
# and the fused [CLS] in layer 1. The other heads are free. Headless:
# `WORKDIR=runs/shapes python notebooks/attention_maps.py`; figures are saved under
# `<workdir>/plots/`.

# %% tags=["parameters"]
import os

workdir = os.environ.get("WORKDIR", "runs/shapes")
data_dir = os.environ.get("DATA_DIR") or None  # None: where the run's config.json says
split = os.environ.get("SPLIT", "test")
first = 0  # the examples shown: split positions first, first + 1, ...
num_examples = 4
token_example = 0  # which of them gets the per-token figure

# %%
import textwrap

import matplotlib.pyplot as plt  # without a display, matplotlib falls back to Agg
import numpy as np

from mmjax import analysis

run = analysis.load_run(workdir, data_dir)
shown = analysis.examples(run, split, range(first, first + num_examples))
maps = analysis.attention_maps(run, shown.batch)
names = run.class_names()
head = run.main_head
labels = shown.batch[head]
predicted = maps.outputs[head]["prediction"]
probabilities = maps.outputs[head]["probabilities"]
images = shown.images
num_heads = maps.weights[maps.layers[0]].shape[1]
os.makedirs(os.path.join(workdir, "plots"), exist_ok=True)

print(f"step {run.step} | fusion {run.config.model.fusion.kind} | {len(maps.layers)} layer(s) x "
      f"{num_heads} heads | image tokens: [CLS] + {maps.grid[0]}x{maps.grid[1]} patches")
for layer in maps.layers:
  print("  layer", layer, maps.weights[layer].shape)
for i, index in enumerate(shown.index):
  print(f"#{index} {shown.texts[i]!r}: true {names[labels[i]]}, predicted "
        f"{names[predicted[i]]} (p={probabilities[i, predicted[i]]:.2f})")

# %% [markdown]
# ## The question's [CLS] over the image
#
# One row per example; for each fusion layer the mean over heads, then each head. The
# colour of a patch is the attention weight of the question's [CLS] (under `merged`, the
# fused [CLS]) on that patch's token; the weight left on the image [CLS] is in the title.

# %%
def show_image(ax, image):
  grey = image.shape[-1] == 1
  ax.imshow(image[..., 0] if grey else image, cmap="gray" if grey else None,
            interpolation="nearest")
  ax.set_xticks([])
  ax.set_yticks([])


def overlay(ax, image, weights, title):
  """The image with a [rows, columns] patch-weight map stretched over it."""
  show_image(ax, image)
  height, width = image.shape[:2]
  ax.imshow(weights, cmap="inferno", alpha=0.6, vmin=0, interpolation="nearest",
            extent=(-0.5, width - 0.5, height - 0.5, -0.5))
  ax.set_title(title, fontsize=7)


panels = [(layer, h) for layer in maps.layers for h in (None, *range(num_heads))]
fig, axes = plt.subplots(num_examples, 1 + len(panels),
                         figsize=(2.0 * (1 + len(panels)), 2.7 * num_examples), squeeze=False)
for i in range(num_examples):
  show_image(axes[i, 0], images[i])
  axes[i, 0].set_title("\n".join(textwrap.wrap(shown.texts[i], 28, max_lines=3, placeholder=" ...")
                                 + [f"true {names[labels[i]]} | pred {names[predicted[i]]}"]),
                       fontsize=7)
  for ax, (layer, h) in zip(axes[i, 1:], panels, strict=True):
    weights = maps.weights[layer][i, :, 0]  # [heads, image tokens]
    on_cls = float(weights[:, 0].mean() if h is None else weights[h, 0])
    short = layer.split("/")[-2]
    overlay(ax, images[i], maps.patches(layer, 0, h)[i],
            f"{short} {'mean' if h is None else f'head {h}'}\nimage [CLS] {on_cls:.2f}")
fig.tight_layout()
fig.savefig(os.path.join(workdir, "plots", f"attention_{split}.png"), dpi=100)
plt.show()

# %% [markdown]
# ## Every question token
#
# For one example, the attention (mean over heads) of each real question token on the
# image patches, one row per fusion layer: which words pick out which objects.

# %%
i = token_example
real = np.flatnonzero(maps.query_mask[i])  # the query rows of real tokens (not padding)
tokens = [maps.queries[i][q] for q in real]
lines = -(-len(tokens) // 12)  # rows of panels per layer: at most 12 tokens a row
per_row = -(-len(tokens) // lines)
fig, axes = plt.subplots(len(maps.layers) * lines, per_row,
                         figsize=(1.6 * per_row, 1.9 * len(maps.layers) * lines), squeeze=False)
for ax in axes.flat:
  ax.axis("off")
for number, layer in enumerate(maps.layers):
  for k, (q, token) in enumerate(zip(real, tokens, strict=True)):
    ax = axes[number * lines + k // per_row, k % per_row]
    ax.axis("on")
    overlay(ax, images[i], maps.patches(layer, q)[i], f"{layer.split('/')[-2]}: {token}")
fig.suptitle(shown.texts[i], fontsize=9)
fig.tight_layout()
fig.savefig(os.path.join(workdir, "plots", f"attention_tokens_{split}.png"), dpi=100)
plt.show()

for layer in maps.layers:
  weights = maps.weights[layer][i].mean(axis=0)[real, 1:]  # [real tokens, patches]
  cells = [f"{t}->{tuple(int(k) for k in np.unravel_index(w.argmax(), maps.grid))}"
           for t, w in zip(tokens, weights, strict=True)]
  print(f"{layer}: most attended patch (row, column) per token:", " ".join(cells))
