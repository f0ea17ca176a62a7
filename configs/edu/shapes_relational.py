r"""Relational visual question answering on six coloured shapes (Sort-of-CLEVR style).

Dataset `shapes_relational` (generated offline on first use): 32x32 images of six objects
(one per colour, each a circle, square or triangle) on a 4x4 grid, and questions about the
object of one colour: non-relational (its shape; left or right; top or bottom) and
relational (the shape of the object closest to it, of the object furthest from it, how
many objects share its shape). The answer is one of 13 classes.

Model: ViT on 8x8 patches (one grid cell per patch: 16 patch tokens + [CLS]) with fixed
2-D sine-cosine position embeddings, a one-layer BERT-style text encoder, two layers of
cross-attention fusion (the question's tokens attend to the image tokens, ALBEF), [CLS]
pooling, 13-way answer head. Training adds weighted auxiliary objectives: attention
supervision (`config.task.attention_targets`: in fusion layer 0 one head of the
question's [CLS] attends to the asked object's cell, in layer 1 to the cell of the object
the answer reports), the same two cells as heads on the fused tokens, and heads naming
the question's type and colour (text tower) and the number of circles, squares and
triangles (image tower). Accuracy is also reported per question type and for relational
/ non-relational questions (`config.evals.group_by`).

Command (CPU, 2 cores; 3,000 steps of 128, about 17 min alone):
  python -m mmjax.main --config configs/edu/shapes_relational.py --workdir runs/shapes
Measured (seed 0): test non-relational 1.000, relational 0.991 (closest 0.996, furthest
0.999, count 0.979), overall 0.996 (4,800 questions); validation 1.000 / 0.995. In runs
without attention supervision, left/right, top/bottom, closest and furthest stayed at
chance (e.g. test non-relational 0.66, relational 0.63 after 1,500 steps with the text
heads only; the cell heads alone stayed at chance too): the model answers shape and
count questions from a bag of (colour, shape) pairs and never binds a colour to its
position. See docs/education.md.

Smoke size for tests and laptops: `--config configs/edu/shapes_relational.py:runlocal`.
Ablations: `fusion=concat|merged|co_attention|cross_attention|late` and
`modalities=image|text`; experiments/ablations/fusion.py runs them all over 3 seeds (on
an H100, merged on 2 CPU cores; relational accuracy: merged 0.992 ± 0.005,
cross_attention 0.985 ± 0.020, co_attention 0.960 ± 0.054, late 0.562, concat 0.560, one
modality 0.35).
"""

import ml_collections

from mmjax.config import adamw, finetune, parse_arg, scale

# Per fusion kind, the attention layer where a question token reads the image, which
# query token is supervised in fusion layers 0 and 1, and the index of the first image
# patch among the keys: after the image [CLS] (offset 1). In every attention kind the
# supervised query is the question's [CLS], and the answer is read from it after fusion:
# `cross_attention` and `co_attention` pool it already. `merged` runs one sequence
# [fused CLS, image CLS, 16 patches, question tokens]: its patches start at 2, the
# question's [CLS] is token 18, and its fused-side heads read that token
# (`input="fused:text"`) rather than the fused [CLS], which is the same learned vector for
# every question in layer 0 and so cannot know where the asked object is until layer 1.
IMAGE_TOKENS = 1 + (32 // 8) ** 2  # 32x32 images in 8x8 patches, plus [CLS]
ATTENTION_LAYERS = {
    "cross_attention": ("fusion/cross_encoder/block_{}/cross_attention", (0, 0), 1),
    "co_attention": ("fusion/block_{}/text/cross_attention", (0, 0), 1),
    "merged": ("fusion/encoder/block_{}/self_attention", (1 + IMAGE_TOKENS,) * 2, 2),
}
FUSED_INPUT = {"merged": "fused:text"}  # the fused-side heads' input; "fused" otherwise


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, runlocal=False, steps=0, fusion="cross_attention", lr=0.0,
                  image_depth=0, fusion_depth=0, batch=0, width=0, heads=0, aux=0.5,
                  ground=0.5, attend=1.0, text_depth=-1, posemb="sincos2d",
                  modalities="image,text")
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
                       question_type="question_type", colour="colour",
                       object_cell="object_cell", answer_cell="answer_cell",
                       circle="circle", square="square", triangle="triangle")

  c.input = ml_collections.ConfigDict()
  c.input.batch_size = arg.batch or (64 if arg.runlocal else 128)
  c.input.max_text_len = 24  # the longest question is 20 tokens
  c.input.num_threads = 1

  width = arg.width or (32 if arg.runlocal else 64)
  heads = arg.heads or (2 if arg.runlocal else 4)
  c.model = ml_collections.ConfigDict()
  c.model.modalities = arg.modalities  # "image" / "text": the single-modality ablations
  c.model.dtype = "float32"  # compute dtype; "bfloat16" on accelerators
  c.model.param_dtype = "float32"
  # Memory/speed knobs (README "Scale"): remat none|full|dots|dots_no_batch; scan stacks.
  c.model.block = dict(remat="none", scan=False)
  c.model.dropout_rate = 0.0
  c.model.image = dict(variant="nano/8" if arg.runlocal else "mu/8", width=width,
                       num_heads=heads, mlp_dim=4 * width,
                       depth=arg.image_depth or (1 if arg.runlocal else 3), posemb=arg.posemb)
  c.model.text = dict(variant="nano" if arg.runlocal else "mu", width=width,
                      num_heads=heads, mlp_dim=4 * width,
                      depth=arg.text_depth if arg.text_depth >= 0 else 1,
                      max_len=c.input.get_ref("max_text_len"))
  c.model.fusion = dict(kind=arg.fusion, width=width, num_heads=heads, mlp_dim=4 * width,
                        depth=arg.fusion_depth or (1 if arg.runlocal else 2))
  # The answer from the fused tokens, plus weighted auxiliary heads (multi-task):
  # `ground` - from the fused tokens, the cell of the asked object and of the object the
  # answer reports (the closest or furthest one, else the asked one); `aux` - from the
  # question alone, its type and the colour it names, and from the image alone, how many
  # circles, squares and triangles it shows (what count questions select from).
  fused = FUSED_INPUT.get(arg.fusion, "fused") if arg.modalities == "image,text" else "fused"
  c.model.heads = dict(answer=dict(input=fused, pooling="cls"))
  c.losses = dict(answer=1.0)
  if arg.ground:
    c.model.heads.update(object_cell=dict(input=fused, pooling="cls"),
                         answer_cell=dict(input=fused, pooling="cls"))
    c.losses.update(object_cell=arg.ground, answer_cell=arg.ground)
  if arg.aux:
    c.model.heads.update(question_type=dict(input="text", pooling="cls"),
                         colour=dict(input="text", pooling="cls"),
                         circle=dict(input="image", pooling="cls"),
                         square=dict(input="image", pooling="cls"),
                         triangle=dict(input="image", pooling="cls"))
    c.losses.update(question_type=arg.aux, colour=arg.aux, circle=arg.aux, square=arg.aux,
                    triangle=arg.aux)
  c.task = dict(name="classification", main="answer", label_smoothing=0.0)
  layer = ATTENTION_LAYERS.get(arg.fusion)
  if arg.attend and layer and arg.modalities == "image,text":
    # Attention supervision (`attend`): in fusion layer i, head 0 of the question's [CLS]
    # is trained to attend to the asked object's cell (layer 0) and to the cell of the
    # object the answer reports (layer 1: the closest or furthest one). Without it the
    # model finds the shape and count answers from a bag of (colour, shape) pairs but
    # never binds a colour to its position: left/right, top/bottom and closest/furthest
    # stayed at chance (measured over 1,500 steps without the `ground` heads, and over
    # 500 with them). `concat` and `late` have no attention from the question to the
    # image to supervise, nor has a single-modality run.
    path, queries, offset = layer
    c.task.attention_targets = {
        field: dict(layer=path.format(i), weight=arg.attend, offset=offset, query=queries[i])
        for i, field in enumerate(("object_cell", "answer_cell")[:c.model.fusion.depth])}

  c.optimizer = adamw(arg.lr or (3e-3 if arg.runlocal else 1e-3))
  c.schedule = dict(warmup_steps=10 if arg.runlocal else 200, decay="cosine", end_factor=0.0)

  # What trains: full | frozen_image | frozen_text | frozen_towers | lora | adapters
  # (mmjax.config.finetune; `rules` over parameter paths come first).
  c.finetune = finetune()

  c.update(scale())  # mesh: data parallel over every device; sharding rules; hosts
  c.checkpoint = dict(every_steps=c.log_every_steps * (2 if arg.runlocal else 10), keep=2)
  # accuracy/<class>: per question type and for relational / non_relational questions.
  c.evals = dict(splits=("validation", "test"), every_steps=0 if arg.runlocal else 1000,
                 batch_size=256, headline="test/accuracy",
                 group_by=("relational", "question_type"))
  return c
