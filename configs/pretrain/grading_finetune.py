r"""Homework grading (configs/edu/grading.py) fine-tuned from an image-text pre-training run.

The towers and fusion have the architecture of configs/pretrain/itc_itm_mlm.py and start
from its checkpoint (`config.init_from`, every matching parameter: image_encoder,
text_encoder, fusion); the heads are new. Text is read with the pre-training run's
tokenizer (its vocabulary covers the grading questions), and the 8x8 grey handwriting is
shown to the image tower as edu_scenes shows a large digit: repeated to 16x16, grey in
all three channels.

Commands (CPU, 2 cores), after the pre-training run:
  python -m mmjax.main --config configs/pretrain/itc_itm_mlm.py --workdir runs/pretrain
  python -m mmjax.main --config configs/pretrain/grading_finetune.py:pretrained=runs/pretrain \
      --workdir runs/grading_pretrained
  # the same model and budget from random initialisation, for comparison:
  python -m mmjax.main \
      --config configs/pretrain/grading_finetune.py:pretrained=runs/pretrain,scratch \
      --workdir runs/grading_scratch

(`scratch` still reads the pre-training run's tokenizer, so both runs see the same
tokens.) Reaches (2 CPU cores, 1,000 steps, seeds 0 / 1): test accuracy 0.966 / 0.961
from the pre-trained run vs 0.953 / 0.964 from scratch; 90 % first reached at step
500 / 500 vs 500 / 600 (experiments/README.md, "Pre-training").
"""

import ml_collections

from mmjax.config import ConfigError, import_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, pretrained="", scratch=False, runlocal=False, steps=0, pretrain_arg="")
  if not arg.pretrained:
    raise ConfigError("configs/pretrain/grading_finetune.py needs the pre-training workdir: "
                      "--config configs/pretrain/grading_finetune.py:pretrained=DIR")
  c = import_config("../edu/grading.py", "runlocal" if arg.runlocal else None)
  # The pre-training run's own arg (`pretrain_arg=losses=itc`), plus `runlocal` for smoke runs.
  pretrain = import_config("itc_itm_mlm.py", ",".join(
      a for a in (arg.pretrain_arg, "runlocal" if arg.runlocal else "") if a) or None)
  if arg.steps:
    c.total_steps = arg.steps
  # Towers and fusion exactly as pre-trained (init_from checks every shape).
  for field in ("image", "text", "fusion", "dtype", "param_dtype", "dropout_rate"):
    c.model[field] = pretrain.model[field]
  c.input.max_text_len = pretrain.input.max_text_len  # the text tower's position table
  c.model.text.max_len = pretrain.input.max_text_len
  image_shape = (16, 16)
  c.input.image_size = image_shape
  c.input.image_channels = 3
  c.input.tokenizer = arg.pretrained  # the run directory holds its tokenizer.json
  c.init_from = "" if arg.scratch else arg.pretrained
  if not arg.runlocal:
    c.evals.every_steps = 100  # a finer curve: steps until 90 % accuracy
  return c
