r"""Relational visual question answering on six coloured shapes (Sort-of-CLEVR style).

Dataset `shapes_relational` (generated offline on first use): 32x32 images of six objects
(one per colour, each a circle, square or triangle) on a 4x4 grid, and questions about the
object of one colour: non-relational (its shape; left or right; top or bottom) and
relational (the shape of the object closest to it, of the object furthest from it, how
many objects share its shape). The answer is one of 13 classes.

Model: ViT on 8x8 patches (one grid cell per patch: 16 patch tokens + [CLS]), a BERT-style
text encoder, cross-attention fusion (the question's tokens attend to the image tokens,
ALBEF), [CLS] pooling, 13-way answer head. Accuracy is also reported per question type
and for relational / non-relational questions (`config.evals.group_by`).

Command (CPU, 2 cores):
  python -m mmjax.main --config configs/edu/shapes_relational.py --workdir runs/shapes

Smoke size for tests and laptops: `--config configs/edu/shapes_relational.py:runlocal`.
"""

import ml_collections

from mmjax.config import adamw, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, runlocal=False, steps=0, fusion="cross_attention", lr=0.0,
                  image_depth=0, fusion_depth=0, batch=0, width=0, heads=0, aux=0.0, text_depth=-1)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = arg.steps or (60 if arg.runlocal else 3000)
  c.log_every_steps = 10 if arg.runlocal else 100

  c.data = ml_collections.ConfigDict()
  c.data.name = "shapes_relational"
  c.data.data_dir = ml_collections.config_dict.placeholder(str)  # None: the tfds default
  # 116k small examples: decode once, keep in memory (a smoke run reads too few to gain).
  c.data.cache = not arg.runlocal
  c.data.train_split = "train"
  c.data.fields = dict(image="image", text="question", answer="answer",
                       question_type="question_type", colour="colour")

  c.input = ml_collections.ConfigDict()
  c.input.batch_size = arg.batch or (64 if arg.runlocal else 128)
  c.input.max_text_len = 24  # the longest question is 20 tokens
  c.input.num_threads = 1

  width = arg.width or (32 if arg.runlocal else 64)
  heads = arg.heads or (2 if arg.runlocal else 4)
  c.model = ml_collections.ConfigDict()
  c.model.modalities = "image,text"
  c.model.dtype = "float32"  # compute dtype; "bfloat16" on accelerators
  c.model.param_dtype = "float32"
  c.model.dropout_rate = 0.0
  c.model.image = dict(variant="nano/8" if arg.runlocal else "mu/8", width=width,
                       num_heads=heads, mlp_dim=4 * width,
                       depth=arg.image_depth or (1 if arg.runlocal else 3))
  c.model.text = dict(variant="nano" if arg.runlocal else "mu", width=width,
                      num_heads=heads, mlp_dim=4 * width,
                      depth=arg.text_depth if arg.text_depth >= 0 else 1,
                      max_len=c.input.get_ref("max_text_len"))
  c.model.fusion = dict(kind=arg.fusion, width=width, num_heads=heads, mlp_dim=4 * width,
                        depth=arg.fusion_depth or (1 if arg.runlocal else 2))
  c.model.heads = dict(answer=dict(input="fused", pooling="cls"))
  c.losses = dict(answer=1.0)
  if arg.aux:
    c.model.heads.update(question_type=dict(input="text", pooling="cls"),
                         colour=dict(input="text", pooling="cls"))
    c.losses.update(question_type=arg.aux, colour=arg.aux)
  c.task = dict(name="classification", main="answer", label_smoothing=0.0)

  c.optimizer = adamw(arg.lr or (3e-3 if arg.runlocal else 1e-3))
  c.schedule = dict(warmup_steps=10 if arg.runlocal else 200, decay="cosine", end_factor=0.0)

  c.finetune = ml_collections.ConfigDict()
  c.finetune.mode = "full"
  c.finetune.rules = ()
  c.finetune.lora = dict(rank=8, alpha=16.0,
                         targets=r"[^/]+_encoder/.*/(query|value)/kernel")
  c.finetune.adapters = dict(dim=16)

  c.mesh = (("data", -1),)  # data parallel over every device
  c.checkpoint = dict(every_steps=c.log_every_steps * (2 if arg.runlocal else 10), keep=2)
  # accuracy/<class>: per question type and for relational / non_relational questions.
  c.evals = dict(splits=("validation", "test"), every_steps=0 if arg.runlocal else 1000,
                 batch_size=256, headline="test/accuracy",
                 group_by=("relational", "question_type"))
  return c
