"""Parameter counts of the named ViT and text-encoder sizes, from `jax.eval_shape` (no memory).

    .venv/bin/python experiments/param_counts.py

Prints one table per tower and compares ViT-B/16 at 224px with `transformers`' FlaxViTModel
(needs transformers 4.x, which still has the Flax models).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mmjax.models import text as text_lib
from mmjax.models import vit as vit_lib
from mmjax.models.layers import BlockOptions

VIT_VARIANTS = ("Ti/16", "S/16", "B/16", "L/14")
TEXT_VARIANTS = ("nano", "mu", "Ti", "S", "B", "L")
IMAGE_SIZE = 224
# Text towers counted with BERT's WordPiece vocabulary and position table.
VOCAB_SIZE, MAX_LEN = 30522, 512


def count(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))


def vit_params(variant: str, **fields) -> dict:
  vit = vit_lib.ViT(**vit_lib.parse_variant(variant), **fields)
  images = jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3))
  return jax.eval_shape(lambda: vit.init(jax.random.key(0), images, train=False))["params"]


def text_params(variant: str, **fields) -> dict:
  encoder = text_lib.TextEncoder(vocab_size=VOCAB_SIZE, max_len=MAX_LEN,
                                 **text_lib.parse_variant(variant), **fields)
  ids = jnp.zeros((1, 8), jnp.int32)
  return jax.eval_shape(
      lambda: encoder.init(jax.random.key(0), ids, ids > 0, train=False))["params"]


def table(title: str, rows: list[tuple[str, dict, int]]) -> None:
  print(f"\n{title}\n| size | width | depth | mlp | heads | parameters |")
  print("|---|---|---|---|---|---|")
  for name, size, params in rows:
    print(f"| {name} | {size['width']} | {size['depth']} | {size['mlp_dim']} | "
          f"{size['num_heads']} | {params:,} ({params / 1e6:.1f} M) |")


def hf_count(model: str, config: str, input_shape: tuple[int, ...]) -> int | None:
  """Parameter count of a `transformers` Flax model with its config's defaults (ViTConfig:
  ViT-B/16 at 224px; BertConfig: bert-base-uncased), pooler included; None without the Flax
  models (transformers 5 removed them)."""
  try:
    import transformers
    flax_model = getattr(transformers, model)(getattr(transformers, config)(), _do_init=False)
  except (ImportError, AttributeError):
    return None
  return count(jax.eval_shape(lambda key: flax_model.init_weights(key, input_shape),
                              jax.random.key(0)))


def main() -> None:
  table(f"ViT at {IMAGE_SIZE}px (mmjax defaults: no pooler)",
        [(v, vit_lib.parse_variant(v), count(vit_params(v))) for v in VIT_VARIANTS])
  table(f"Text encoder (vocab {VOCAB_SIZE}, max_len {MAX_LEN}, mmjax defaults)",
        [(v, text_lib.parse_variant(v), count(text_params(v))) for v in TEXT_VARIANTS])
  bert = count(text_params("B", type_vocab_size=2, embed_norm=True, final_norm=False,
                           pooler="cls_tanh",
                           options=BlockOptions("post", "gelu", 1e-12)))
  hf_bert = hf_count("FlaxBertModel", "BertConfig", (1, 8))
  print(f"\nBERT-B layout (token types, embedding norm, pooler, no final norm): {bert:,}; "
        f"FlaxBertModel: {hf_bert:,}; difference {hf_bert - bert:,} = 12 key biases x 768"
        if hf_bert else f"\nBERT-B layout: {bert:,}")

  ours = count(vit_params("B/16"))
  hf_layout = count(vit_params("B/16", pooler="cls_tanh"))
  hf = hf_count("FlaxViTModel", "ViTConfig", (1, IMAGE_SIZE, IMAGE_SIZE, 3))
  width, depth = 768, 12
  print(f"\nViT-B/16: mmjax {ours:,}; with the HF pooler (pooler='cls_tanh') {hf_layout:,}; "
        + (f"FlaxViTModel {hf:,}" if hf else "FlaxViTModel unavailable (needs transformers 4.x)"))
  if hf:
    print(f"  FlaxViTModel - mmjax(HF layout) = {hf - hf_layout:,} = {depth} key biases x "
          f"{width} ({depth * width:,}), which mmjax drops (softmax ignores them)")
    print(f"  mmjax(HF layout) - mmjax default = {hf_layout - ours:,} = pooler Dense "
          f"{width}x{width} + bias ({width * width + width:,})")


if __name__ == "__main__":
  main()
