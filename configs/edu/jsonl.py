r"""Your own data, no code: a directory of data.jsonl + files -> classification (or
multiple choice).

Dataset `jsonl` (mmjax/data/builders/jsonl/jsonl.py documents the format): each line of
DIR/data.jsonl is a row {"split": ..., "text": ..., "image": "img/1.png", "audio":
"audio/1.wav", "label": "circle"}; DIR/dataset.json declares the class names (and the
image size, audio rate and length). It is checked, built offline on first use, and
rebuilt whenever the files change. This config predicts `label` from the modalities the
`modalities` arg names (a subset of those the rows have). With `task=multiple_choice`
it reads rows with `question`, `context`, `choices` and `answer` instead, and scores
each (question, choice) pair with the image (mmjax/tasks/multiple_choice.py).

Model: small towers for each modality (ViT-mu/4 on 32x32 images, a 2-layer BERT-style
text encoder, an audio spectrogram Transformer mu/16 on log-mel features), 2 layers of
merged (single-stream) fusion, [CLS] pooling, a head over the dataset's classes.

Command (the demo directory shipped in the repo, text + image + audio, 3 classes):
  python -m mmjax.main --config configs/edu/jsonl.py --workdir runs/jsonl_demo \
      --config.data.path=examples/jsonl_demo
Your data, e.g. text and images only, with no `test` rows:
  python -m mmjax.main --config configs/edu/jsonl.py:modalities=text+image \
      --workdir runs/mine --config.data.path=/data/mine \
      --config.evals.splits='("validation",)' --config.evals.headline=validation/accuracy
Arguments: modalities=text+image+audio ('+'-separated; default: all three, or
text+image for task=multiple_choice), task=classification|multiple_choice, max_choices=5,
steps=N (default 300), sample_rate=16000 (Hz; keep it equal to dataset.json's
audio_sample_rate), max_text_len=64.

Reaches (measured on 2 CPU cores shared with other jobs, seed 0, on examples/jsonl_demo:
42 train / 9 validation / 9 test rows, so one test row is 11 points):
  300 steps, text+image+audio: test accuracy 0.778 (7 of 9), validation 1.000, in
  11.9 minutes (dataset build included; load average ~16 on the 2 cores)
  150 steps, :modalities=audio -> test 1.000 (validation 1.000), 2.1 min
  150 steps, :modalities=image -> test 0.556 (validation 0.667), 2.3 min
  150 steps, :modalities=text  -> test 0.778 (validation 0.889), 3.8 min
With this little data the fused model fits the training rows (loss 0.005) without
relying on the one modality that alone is enough (the clap pattern): the figures show
the format working, not a benchmark.
Smoke size for tests and laptops: `--config configs/edu/jsonl.py:runlocal`.
"""

import ml_collections

from mmjax.config import ConfigError, adamw, finetune, parse_arg, scale


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, runlocal=False, task="classification", modalities="", steps=0,
                  sample_rate=16000, max_text_len=64, max_choices=5)
  if arg.task not in ("classification", "multiple_choice"):
    raise ConfigError(f"config arg 'task': expected classification or multiple_choice, got "
                      f"'{arg.task}'")
  choice = arg.task == "multiple_choice"
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = arg.steps or (30 if arg.runlocal else 300)
  c.log_every_steps = 10 if arg.runlocal else 25

  c.data = ml_collections.ConfigDict()
  c.data.name = "jsonl"
  # Required: the directory holding data.jsonl (--config.data.path=DIR).
  c.data.path = ml_collections.config_dict.placeholder(str)
  c.data.data_dir = ml_collections.config_dict.placeholder(str)  # None: the tfds default
  c.data.cache = True  # user datasets are small: decode once, keep in memory
  c.data.train_split = "train"
  # Batch roles -> the dataset's features (multiple choice: the label is the answer index).
  c.data.fields = (dict(image="image", question="question", context="context",
                        choices="choices", label="answer") if choice else
                   dict(image="image", text="text", audio="audio", label="label"))

  c.input = ml_collections.ConfigDict()
  c.input.batch_size = 16 if arg.runlocal else 32
  c.input.max_text_len = arg.max_text_len  # multiple choice: per (question, choice) pair
  c.input.num_threads = 1

  c.model = ml_collections.ConfigDict()
  c.model.modalities = (arg.modalities.replace("+", ",") or
                        ("text,image" if choice else "text,image,audio"))
  c.model.dtype = "float32"  # compute dtype; "bfloat16" on accelerators
  c.model.param_dtype = "float32"
  # Memory/speed knobs (README "Scale"): remat none|full|dots|dots_no_batch; scan stacks.
  c.model.block = dict(remat="none", scan=False)
  c.model.dropout_rate = 0.0 if arg.runlocal else 0.1
  c.model.image = dict(variant="nano/8" if arg.runlocal else "mu/4")
  c.model.text = dict(variant="nano" if arg.runlocal else "mu",
                      max_len=c.input.get_ref("max_text_len"))
  c.model.audio = dict(variant="nano/16" if arg.runlocal else "mu/16",
                       sample_rate=arg.sample_rate)
  width = 32 if arg.runlocal else 64
  c.model.fusion = dict(kind="merged", depth=1 if arg.runlocal else 2, width=width,
                        num_heads=2, mlp_dim=4 * width)
  c.model.heads = dict(label=dict(input="fused", pooling="cls"))  # multiple choice: 1 logit
  c.losses = dict(label=1.0)
  c.task = dict(name=arg.task, main="label", label_smoothing=0.0)
  if choice:
    c.task.max_choices = arg.max_choices

  c.optimizer = adamw(3e-3 if arg.runlocal else 1e-3)
  c.schedule = dict(warmup_steps=5 if arg.runlocal else 30, decay="cosine", end_factor=0.0)

  # What trains: full | frozen_image | frozen_text | frozen_towers | lora | adapters
  # (mmjax.config.finetune; `rules` over parameter paths come first).
  c.finetune = finetune()

  c.update(scale())  # mesh: data parallel over every device; sharding rules; hosts
  c.checkpoint = dict(every_steps=4 * c.log_every_steps, keep=1)  # and at the last step
  c.evals = dict(splits=("validation", "test"), every_steps=0, batch_size=32,
                 headline="test/accuracy")
  return c
