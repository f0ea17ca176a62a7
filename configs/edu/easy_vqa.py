r"""Visual question answering on real easy-VQA data: one coloured shape, 13 answers.

Dataset `easy_vqa` (read offline on first use from the `easy-vqa` PyPI package, MIT
licence): 64x64 pictures of one circle, rectangle or triangle in one of eight colours,
with templated questions about its shape, its colour, or whether a shape or colour is
(not) present ("is there not a blue shape?"); 13 answers (3 shapes, 8 colours, yes, no).
`validation` is 400 of the package's train images held out whole; `test` is the
package's own test split (1,000 unseen images, 9,673 questions).

Model: images downsampled to 32x32 (`config.input.image_size`; the smallest shapes stay
4 pixels wide), a ViT on 4x4 patches (64 patch tokens + [CLS]), a BERT-style text encoder,
cross-attention fusion (the question's tokens attend to the image tokens, ALBEF), [CLS]
pooling, 13-way answer head. Accuracy is also reported per answer type (shape, color,
yes_no; `config.evals.group_by`).

Command (CPU, 2 cores):
  python -m mmjax.main --config configs/edu/easy_vqa.py --workdir runs/easy_vqa

Smoke size for tests and laptops: `--config configs/edu/easy_vqa.py:runlocal`.
"""

import ml_collections

from mmjax.config import adamw, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, runlocal=False, steps=0, res=64, patch=8, fusion="cross_attention",
                  lr=0.0, batch=0, width=0, image_depth=0, fusion_depth=0, aux=0.5)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = arg.steps or (60 if arg.runlocal else 1500)
  c.log_every_steps = 10 if arg.runlocal else 100

  c.data = ml_collections.ConfigDict()
  c.data.name = "easy_vqa"
  c.data.data_dir = ml_collections.config_dict.placeholder(str)  # None: the tfds default
  # 35k training examples (12 kB images): decode once, keep in memory (~0.5 GB).
  c.data.cache = not arg.runlocal
  c.data.train_split = "train"
  # `image_answer`: the auxiliary image-only head's target is the answer too.
  c.data.fields = dict(image="image", text="question", answer="answer", image_answer="answer")

  c.input = ml_collections.ConfigDict()
  c.input.batch_size = arg.batch or (64 if arg.runlocal else 128)
  c.input.max_text_len = 16  # the longest question is 12 tokens with [CLS] and [SEP]
  c.input.image_size = (arg.res, arg.res)  # nearest-neighbour from the stored 64x64
  c.input.num_threads = 1

  width = arg.width or (32 if arg.runlocal else 64)
  c.model = ml_collections.ConfigDict()
  c.model.modalities = "image,text"
  c.model.dtype = "float32"  # compute dtype; "bfloat16" on accelerators
  c.model.param_dtype = "float32"
  c.model.dropout_rate = 0.0
  c.model.image = dict(variant=("nano/" if arg.runlocal else "mu/") + str(arg.patch),
                       width=width, mlp_dim=4 * width,
                       depth=arg.image_depth or (1 if arg.runlocal else 2))
  c.model.text = dict(variant="nano" if arg.runlocal else "mu", width=width,
                      max_len=c.input.get_ref("max_text_len"))
  c.model.fusion = dict(kind=arg.fusion, width=width, num_heads=2, mlp_dim=4 * width,
                        depth=arg.fusion_depth or (1 if arg.runlocal else 2))
  # The answer from the fused tokens, plus an auxiliary head guessing it from the image
  # alone: it can only learn the shape's and colour's names (the image's share of the
  # answers), which gives the image tower a direct signal for both.
  c.model.heads = dict(answer=dict(input="fused", pooling="cls"),
                       image_answer=dict(input="image", pooling="cls"))
  c.losses = dict(answer=1.0, image_answer=arg.aux) if arg.aux else dict(answer=1.0)
  c.task = dict(name="classification", main="answer", label_smoothing=0.0)

  c.optimizer = adamw(arg.lr or (3e-3 if arg.runlocal else 1e-3))
  c.schedule = dict(warmup_steps=10 if arg.runlocal else 150, decay="cosine", end_factor=0.0)

  c.finetune = ml_collections.ConfigDict()
  c.finetune.mode = "full"
  c.finetune.rules = ()
  c.finetune.lora = dict(rank=8, alpha=16.0,
                         targets=r"[^/]+_encoder/.*/(query|value)/kernel")
  c.finetune.adapters = dict(dim=16)

  c.mesh = (("data", -1),)  # data parallel over every device
  c.checkpoint = dict(every_steps=c.log_every_steps * (2 if arg.runlocal else 10), keep=2)
  # accuracy/shape, accuracy/color, accuracy/yes_no besides the overall figures.
  c.evals = dict(splits=("validation", "test"), every_steps=0 if arg.runlocal else 500,
                 batch_size=256, headline="test/accuracy", group_by=("answer_type",))
  return c
