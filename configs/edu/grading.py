r"""Handwritten homework grading: is the handwritten digit the answer to the question?

Dataset `edu_grading` (built offline on first use): an arithmetic question ("What is
7 - 3?", "Subtract four from 8.", word problems) and a real handwritten digit from
scikit-learn's `load_digits`; the label says whether the handwriting answers the
question correctly. Labels are balanced per image and per question wording, so the
task needs both modalities.

Model: ViT-mu/2 on the 8x8 image (16 patches + [CLS]), a 2-layer BERT-style text
encoder, 2 layers of one-way cross-attention fusion (text attends to image, ALBEF),
[CLS] pooling, 2-way classification head.

Command (CPU, 2 cores):
  python -m mmjax.main --config configs/edu/grading.py --workdir runs/grading

Reaches (measured on 2 CPU cores, seed 0, 1,000 steps; train + eval time, dataset build
included):
  test accuracy 0.968 (validation 0.967) in 7.5 minutes with the CPU shared; the
  auxiliary heads reach 0.933 digit transcription and 1.000 question answering on test
  (edu_grading 1.1.0; with the 1.0.0 vocabulary: 0.971 / 0.954).
Ablations of the same config (see experiments/README.md):
  :modalities=image -> test accuracy 0.500   (image tower only)
  :modalities=text  -> test accuracy 0.501   (text tower only)
  :aux=0            -> test accuracy 0.488   (grade head alone stays at chance)
Smoke size for tests and laptops: `--config configs/edu/grading.py:runlocal`.
"""

import ml_collections

from mmjax.config import adamw, finetune, parse_arg, scale


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, runlocal=False, modalities="image,text", steps=0, aux=0.5)
  aux = arg.aux
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = arg.steps or (60 if arg.runlocal else 1000)
  c.log_every_steps = 10 if arg.runlocal else 50

  c.data = ml_collections.ConfigDict()
  c.data.name = "edu_grading"
  c.data.data_dir = ml_collections.config_dict.placeholder(str)  # None: the tfds default
  # 25k small examples: decode once, keep in memory (a smoke run reads too few to gain).
  c.data.cache = not arg.runlocal
  c.data.train_split = "train"
  # Train on the examples of the first `count` distinct values of an integer feature (off
  # while feature is ""): feature="image_id", count=200 keeps every question about 200
  # handwritten images (experiments/ablations/augment.py).
  c.data.train_groups = dict(feature="", count=0)
  # Mirrored handwriting is not the same digit: `flip_lr` in config.augment is refused.
  c.data.flip_safe = False
  # Dataset feature feeding each batch role: inputs (image, text) and targets (the rest).
  c.data.fields = dict(image="image", text="question", label="label",
                       written_digit="written_digit", answer="answer")

  c.input = ml_collections.ConfigDict()
  c.input.batch_size = 64 if arg.runlocal else 128
  # Micro-batches per step (gradient accumulation): same step, 1/k of the activations.
  c.input.accum_steps = 1
  c.input.max_text_len = 28  # the longest question is 25 tokens
  c.input.num_threads = 1

  c.model = ml_collections.ConfigDict()
  c.model.modalities = arg.modalities
  c.model.dtype = "float32"  # compute dtype; "bfloat16" on accelerators
  c.model.param_dtype = "float32"
  # Memory/speed knobs (README "Scale"): remat none|full|dots|dots_no_batch; scan stacks.
  c.model.block = dict(remat="none", scan=False)
  c.model.dropout_rate = 0.0
  # Per tower (and fusion): `dropout_rate` overrides the global rate (None: the global one);
  # `drop_path_rate` is stochastic depth, the rate of the tower's last block (0: off).
  rate = lambda: ml_collections.config_dict.placeholder(float)  # noqa: E731  (one each)
  c.model.image = dict(variant="nano/2" if arg.runlocal else "mu/2", dropout_rate=rate(),
                       drop_path_rate=0.0)
  # A reference: overriding --config.input.max_text_len resizes the text tower too.
  c.model.text = dict(variant="nano" if arg.runlocal else "mu",
                      max_len=c.input.get_ref("max_text_len"), dropout_rate=rate(),
                      drop_path_rate=0.0)
  width = 32 if arg.runlocal else 64
  c.model.fusion = dict(kind="cross_attention", depth=1 if arg.runlocal else 2, width=width,
                        num_heads=2, mlp_dim=4 * width, dropout_rate=rate())
  # Heads: the grade from the fused tokens, plus auxiliary heads that read one tower each:
  # transcribe the handwritten digit (image) and solve the question (text).
  c.model.heads = dict(
      label=dict(input="fused", pooling="cls"),
      written_digit=dict(input="image", pooling="cls"),
      answer=dict(input="text", pooling="cls"),
  )
  c.losses = dict(label=1.0, written_digit=aux, answer=aux)  # weighted multi-task
  c.task = dict(name="classification", main="label", label_smoothing=0.0)

  # AdamW (mmjax.config.adamw): weight decay on kernels only, clipping at 1.0;
  # `lr_mults` = ((regex, multiplier), ...) scales the updates of the first matching
  # parameters, 0 freezes them, e.g. (("heads/.*", 10.0),) for a fast head on a slow body.
  c.optimizer = adamw(3e-3 if arg.runlocal else 1e-3)
  c.schedule = dict(warmup_steps=10 if arg.runlocal else 100, decay="cosine", end_factor=0.0)

  # What trains: full | frozen_image | frozen_text | frozen_towers | lora | adapters
  # (mmjax.config.finetune; `rules` over parameter paths come first).
  c.finetune = finetune()

  c.update(scale())  # mesh: data parallel over every device; sharding rules; hosts
  c.checkpoint = dict(every_steps=c.log_every_steps * (2 if arg.runlocal else 10), keep=2)
  c.evals = dict(splits=("validation", "test"), every_steps=0 if arg.runlocal else 400,
                 batch_size=256, headline="test/accuracy")
  # Early stopping (off while `metric` is ""): e.g. metric="validation/accuracy" stops when
  # `patience` evaluations (every evals.every_steps) in a row do not beat the best by more
  # than `min_delta`; the best checkpoint is kept in <workdir>/best/ apart from the latest
  # (`mmjax eval --checkpoint best`).
  c.early_stopping = dict(metric="", mode="max", patience=3, min_delta=0.0)
  # A step with a non-finite loss or gradient stops the run with a report (False: the last
  # good checkpoint stays), or its update is skipped and counted (True).
  c.skip_nonfinite_steps = False
  # Weights & Biases (mmjax/utils/writers.py; off unless `enabled` and `wandb` is installed):
  # process 0 logs every scalar and the config; the run lives in <workdir>/wandb and resumes
  # with the workdir. mode: offline (files; `wandb sync` uploads) | online | disabled.
  c.wandb = dict(enabled=False, project="mmjax", entity="", name="", tags=(), mode="offline")
  # Training-time augmentation (mmjax/data/augment.py; "" = off): registered ops joined by
  # "|", drawn from (seed, example position), e.g. "random_resized_crop(scale=(0.7, 1.0))|
  # color_jitter(0.3)|token_dropout(0.1)"; evaluation is never augmented.
  c.augment = ""
  # Adversarial training (mmjax/train/adversarial.py; off while `kind` is ""): "fgm" or
  # "pgd" perturbs the `modalities`' input embeddings (text tokens; image patches) within a
  # per-example `norm` ("l2" or "linf") ball of radius `eps`; the loss becomes clean +
  # `weight` * adversarial (clean=False: adversarial only). PGD takes `steps` steps of
  # `step_size` (0: 2.5 * eps / steps), from zero or a `random_start`. Scale: one token's
  # embedding has an L2 norm of about 0.02 * sqrt(width) (0.16 at width 64), and an L2
  # attack can spend all of eps on one token.
  c.adversarial = dict(kind="", eps=0.01, steps=3, step_size=0.0, weight=1.0, clean=True,
                       modalities=("text",), norm="l2", random_start=False)
  return c
