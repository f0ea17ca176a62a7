r"""Image-text pre-training on `edu_scenes` with ITC + ITM + MLM (ALBEF-style).

Dataset `edu_scenes` (built offline on first use): 16x16 scenes of coloured shapes and
real handwritten digits with varied descriptive captions; 60,000 training pairs, and
held-out splits of 1,000 pairs with distinct scenes (validation, test) plus 1,000
one-object scenes for zero-shot classification (`classify`).

Model: ViT (patch 4: 16 patches + [CLS]) and BERT-style text tower, 2 layers of one-way
cross-attention fusion (text attends to image); ITC on the towers' [CLS] projected to
`embed_dim`; ITM on the fused [CLS] with hard negatives mined from the ITC similarities;
MLM on the fused text tokens.

Command (CPU, 2 cores):
  python -m mmjax.main --config configs/pretrain/itc_itm_mlm.py --workdir runs/pretrain

Evaluation: image->text and text->image retrieval R@1/5/10 among the 1,000 test pairs,
ITM and MLM accuracy, zero-shot classification of one-object scenes from text prompts.
Reaches (2 CPU cores, seed 0, 500 steps of batch 256, dataset build included): test
image->text R@1 0.642 / R@5 0.949 / R@10 0.984, text->image R@1 0.662 / R@5 0.960 /
R@10 0.985, zero-shot classification 0.705, in 17.4 minutes (experiments/README.md,
"Pre-training").

Options after the colon: `runlocal` (a few steps of tiny towers for tests), `steps=N`,
`losses=itc+itm+mlm` (any `+`-joined subset of itc, itm, mlm, caption),
`contrastive=softmax|sigmoid`.
Fine-tuning from the result: configs/pretrain/grading_finetune.py.
"""

import ml_collections

from mmjax.config import adamw, parse_arg, scale

# Zero-shot prompts: one phrase per `category` class of edu_scenes, in its order.
CLASSNAMES = ("circle", "square", "triangle", "cross") + tuple(
    f"handwritten {word}" for word in ("zero", "one", "two", "three", "four", "five", "six",
                                       "seven", "eight", "nine"))
TEMPLATES = ("a {}.", "a large {}.", "there is a {} in the picture.")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, runlocal=False, steps=0, losses="itc+itm+mlm", contrastive="softmax")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = arg.steps or (20 if arg.runlocal else 500)
  c.log_every_steps = 5 if arg.runlocal else 50

  c.data = ml_collections.ConfigDict()
  c.data.name = "edu_scenes"
  c.data.data_dir = ml_collections.config_dict.placeholder(str)  # None: the tfds default
  c.data.cache = not arg.runlocal
  c.data.train_split = "train"
  c.data.fields = dict(image="image", text="caption")

  c.input = ml_collections.ConfigDict()
  c.input.batch_size = 32 if arg.runlocal else 256
  c.input.max_text_len = 40  # the longest caption is shorter (tests check it)
  c.input.num_threads = 1

  c.model = ml_collections.ConfigDict()
  c.model.modalities = "image,text"
  c.model.dtype = "float32"
  c.model.param_dtype = "float32"
  # Memory/speed knobs (README "Scale"): remat none|full|dots|dots_no_batch; scan stacks.
  c.model.block = dict(remat="none", scan=False)
  c.model.dropout_rate = 0.0
  c.model.image = dict(variant="nano/4" if arg.runlocal else "mu/4")
  c.model.text = dict(variant="nano" if arg.runlocal else "mu",
                      max_len=c.input.get_ref("max_text_len"))
  width = 32 if arg.runlocal else 64
  c.model.fusion = dict(kind="cross_attention", depth=1 if arg.runlocal else 2, width=width,
                        num_heads=2, mlp_dim=4 * width)
  c.model.embed_dim = width
  # Used by the caption objective only (`:losses=itc+caption`).
  c.model.decoder = dict(width=width, depth=1 if arg.runlocal else 2, mlp_dim=4 * width,
                         num_heads=2)

  objectives = [name.strip() for name in arg.losses.split("+") if name.strip()]
  c.losses = {name: 1.0 for name in objectives}
  # ITM negatives ~ softmax(3 * cosine similarity): with the ITC logit scale (ALBEF's
  # choice, negative_scale=0) they turn so hard so early here that ITM stays at its prior
  # for hundreds of steps; a fixed scale of 3 still prefers similar captions.
  c.task = dict(name="pretrain", contrastive=arg.contrastive, label_smoothing=0.0,
                mask_prob=0.15, negative_scale=3.0)

  c.optimizer = adamw(3e-3 if arg.runlocal else 1e-3)
  c.schedule = dict(warmup_steps=5 if arg.runlocal else 50, decay="cosine", end_factor=0.0)

  c.update(scale())  # mesh: data parallel over every device; sharding rules; hosts
  c.checkpoint = dict(every_steps=c.log_every_steps * (2 if arg.runlocal else 10), keep=2)
  c.evals = dict(splits=("validation", "test"), every_steps=0 if arg.runlocal else 250,
                 batch_size=200 if not arg.runlocal else 40, headline="test/i2t_r1",
                 zeroshot=dict(split="classify", label="category", classnames=CLASSNAMES,
                               templates=TEMPLATES))
  return c
