r"""Video question answering: which way do the shapes move?

Dataset `video_motion` (generated offline on first use): 8-frame 32x32 clips of two
shapes of distinct colours moving in two different directions, and one question per clip,
of three types in equal numbers: "Which way does the red circle move?" (left, right, up,
down), "Is the blue square moving up?" (yes, no), "What colour is the shape that moves to
the left?" (a colour); 10 answer classes.

Model: the video tower (mmjax/models/video.py) runs a ViT on 8x8 patches of every frame
(one set of weights; 16 patch tokens + [CLS] per frame, fixed 2-D sine-cosine positions),
then one temporal Transformer block over a clip token and the 8 frame [CLS] tokens with
fixed temporal positions (`temporal=transformer`; `temporal=mean` averages the frames'
tokens instead, blind to frame order); a one-layer BERT-style text encoder; two layers of
cross-attention fusion (the question's tokens attend to the clip's tokens); [CLS] pooling,
10-way answer head. Weighted auxiliary heads (multi-task): from the video tower alone,
what the shape of each colour does (`aux`: absent, left, right, up, down); from the fused
tokens, the direction of the shape the question is about (`ground`). Accuracy is also
reported per question type (`config.evals.group_by`).

Command (CPU, 2 cores; 8,000 steps of 32: 326 s wall, dataset build included):
  python -m mmjax.main --config configs/edu/video_qa.py --workdir runs/video_qa
Measured (seed 0): test accuracy 0.980 (direction 0.967, yes/no 0.977, which colour
0.997; 900 questions), validation 0.982; the video tower's own motion heads 0.97-1.00.
Chance: 0.25 / 0.5 / 0.25 per type, 0.33 overall. Ablations (same steps, test accuracy):
  :modalities=text   -> 0.331   (chance: the question alone cannot tell)
  :modalities=video  -> 0.170   (the clip alone: which shape, which question?)
  :temporal=mean     -> 0.684   (frames averaged, order lost: direction 0.480; yes/no and
                                 which colour 0.787, often settled by a shape's axis of
                                 motion, which the averaged frames still show)
  :aux=0,ground=0    -> 0.412   (answer head alone: direction 0.253, which 0.483 (the two
                                 colours shown), yes/no 0.500; no motion found)
One frame alone tells a shape's direction at best 44 % of the time (`video_motion` doc).

Smoke size for tests and laptops: `--config configs/edu/video_qa.py:runlocal`.
Other fusion kinds: `fusion=concat|merged|co_attention|late` (not measured here).
"""

import ml_collections

from mmjax.config import adamw, finetune, parse_arg, scale

MOTION_HEADS = ("motion_red", "motion_green", "motion_blue", "motion_yellow")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, runlocal=False, steps=0, fusion="cross_attention",
                  modalities="video,text", temporal="transformer", lr=0.0, batch=0, aux=1.0,
                  ground=1.0, width=0, heads=0, depth=0, fusion_depth=0)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = arg.steps or (30 if arg.runlocal else 8000)
  c.log_every_steps = 10 if arg.runlocal else 200

  c.data = ml_collections.ConfigDict()
  c.data.name = "video_motion"
  c.data.data_dir = ml_collections.config_dict.placeholder(str)  # None: the tfds default
  # 6k clips of 24 KB: decode once, keep in memory (a smoke run reads too few to gain).
  c.data.cache = not arg.runlocal
  c.data.train_split = "train"
  c.data.fields = dict(video="video", text="question", answer="answer",
                       direction="direction", **{name: name for name in MOTION_HEADS})

  c.input = ml_collections.ConfigDict()
  c.input.batch_size = arg.batch or (16 if arg.runlocal else 32)
  c.input.max_text_len = 20  # the longest question is 17 tokens with [CLS] and [SEP]
  c.input.num_threads = 1

  width = arg.width or 32
  heads = arg.heads or 2
  c.model = ml_collections.ConfigDict()
  c.model.modalities = arg.modalities  # "video" / "text": the single-modality ablations
  c.model.dtype = "float32"  # compute dtype; "bfloat16" on accelerators
  c.model.param_dtype = "float32"
  # Memory/speed knobs (README "Scale"): remat none|full|dots|dots_no_batch; scan stacks.
  c.model.block = dict(remat="none", scan=False)
  c.model.dropout_rate = 0.0
  # The frame ViT (variant, size overrides, posemb) and the temporal model: `temporal`
  # transformer (temporal_depth blocks over the frames' [CLS] tokens) or mean (average).
  c.model.video = dict(variant="nano/8" if arg.runlocal else "mu/8", width=width,
                       num_heads=heads, mlp_dim=4 * width, depth=arg.depth or 1,
                       posemb="sincos2d", temporal=arg.temporal, temporal_depth=1)
  c.model.text = dict(variant="nano" if arg.runlocal else "mu", width=width, num_heads=heads,
                      mlp_dim=4 * width, depth=1, max_len=c.input.get_ref("max_text_len"))
  c.model.fusion = dict(kind=arg.fusion, width=width, num_heads=heads, mlp_dim=4 * width,
                        depth=arg.fusion_depth or (1 if arg.runlocal else 2))
  c.model.heads = dict(answer=dict(input="fused", pooling="cls"))
  c.losses = dict(answer=1.0)
  if arg.aux:
    # Auxiliary heads on the video tower alone (multi-task, weight `aux`): what the object
    # of each colour does (absent, left, right, up, down), read from the clip token.
    c.model.heads.update({name: dict(input="video", pooling="cls") for name in MOTION_HEADS})
    c.losses.update({name: arg.aux for name in MOTION_HEADS})
  if arg.ground:
    # From the fused tokens, the direction of the object the question is about (for every
    # question type, where the answer names it for a third of them): weight `ground`.
    c.model.heads.update(direction=dict(input="fused", pooling="cls"))
    c.losses.update(direction=arg.ground)
  c.task = dict(name="classification", main="answer", label_smoothing=0.0)

  c.optimizer = adamw(arg.lr or (3e-3 if arg.runlocal else 2e-3))
  c.schedule = dict(warmup_steps=5 if arg.runlocal else 50, decay="cosine", end_factor=0.0)

  # What trains: full | frozen_image | frozen_text | frozen_towers | lora | adapters
  # (mmjax.config.finetune; `rules` over parameter paths come first).
  c.finetune = finetune()

  c.update(scale())  # mesh: data parallel over every device; sharding rules; hosts
  c.checkpoint = dict(every_steps=c.log_every_steps * (3 if arg.runlocal else 10), keep=2)
  # accuracy/<type>: per question type (direction, yes_no, which).
  c.evals = dict(splits=("validation", "test"), every_steps=0 if arg.runlocal else 2000,
                 batch_size=64 if arg.runlocal else 200, headline="test/accuracy",
                 group_by=("question_type",))
  return c
