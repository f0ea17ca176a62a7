r"""Learning-behaviour classification from a reflection, a worksheet photo and audio.

Dataset `edu_behaviour` (built offline on first use): per lesson, a student's written
reflection (text), a 16x16 grey photo of the worksheet (image) and a 0.5 s clip at 8 kHz
(audio); the label is engaged, struggling or disengaged. Each modality independently
shows the true label's cue, no evidence, or a wrong cue, so evidence adds up: the
Bayes-optimal accuracy is ~0.70 from one modality, ~0.81 from two and ~0.88 from all
three (mmjax/data/builders/edu_behaviour/behaviour.py).

Model: the towers of `modalities` (any non-empty subset of image, text, audio, joined
with "+"): ViT-mu/4 on the image (16 patches + [CLS]), a 2-layer BERT-style text
encoder, a 2-layer Audio Spectrogram Transformer (log-mel, 16 mels, patch 4: 32 patches
+ [CLS]); concat fusion (each tower mean-pooled, concatenated, one residual MLP block),
which works for every subset; a 3-way head on the fused vector.

Command (CPU, 2 cores; `modalities` defaults to image+text+audio):
  python -m mmjax.main --config configs/edu/behaviour.py --workdir runs/behaviour
  python -m mmjax.main --config configs/edu/behaviour.py:modalities=image+text \
      --workdir runs/behaviour_image+text

Reaches (measured on 2 CPU cores shared with other jobs, seed 0, 400 steps of 128, ~2.5
epochs; train time with the CPU shared, dataset build excluded). Bayes: the optimal
accuracy from those modalities' cues, exact (`behaviour.bayes_accuracy`) and the Bayes
rule applied to the 2,000 test examples' cues (ties to the first label):
  modalities          test acc   val acc   Bayes exact   Bayes on test   train time
  image+text+audio    0.8755     0.8735    0.8774        0.8805          15.9 min
  image+text          0.8170     0.8215    0.8160        0.8285           8.5 min
  text+audio          0.8170     0.8025    0.8123        0.8155          11.0 min
  image+audio         0.7990     0.8075    0.8060        0.7930           8.7 min
  text                0.7285     0.7075    0.7133        0.7310           5.1 min
  image               0.6900     0.7095    0.7000        0.6905           3.5 min
  audio               0.6805     0.6915    0.6867        0.6785           4.5 min
All three > best pair > best single, each within 0.016 of its exact Bayes figure (the
test split alone has a sampling error of about 0.01). The CPU load was 9-19 during these
runs, so the times are several times what 2 free cores take.
Smoke size for tests and laptops: `--config configs/edu/behaviour.py:runlocal`.
"""

import ml_collections

from mmjax.config import ConfigError, adamw, finetune, parse_arg, scale

MODALITIES = ("image", "text", "audio")


def parse_modalities(text: str) -> str:
  """"image+text" -> "image,text" (config.model.modalities); a ConfigError for anything
  but a non-empty subset of image, text, audio."""
  names = [name.strip() for name in text.replace(",", "+").split("+")]
  if not all(names) or any(name not in MODALITIES for name in names) or \
      len(set(names)) != len(names):
    raise ConfigError(f"config arg 'modalities': expected a non-empty subset of "
                      f"{', '.join(MODALITIES)} joined with '+', got '{text}'")
  return ",".join(names)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, runlocal=False, modalities="image+text+audio", steps=0)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = arg.steps or (30 if arg.runlocal else 400)
  c.log_every_steps = 10 if arg.runlocal else 50

  c.data = ml_collections.ConfigDict()
  c.data.name = "edu_behaviour"
  c.data.data_dir = ml_collections.config_dict.placeholder(str)  # None: the tfds default
  c.data.cache = not arg.runlocal  # 24k examples, ~200 MB decoded: decode once
  c.data.train_split = "train"
  c.data.fields = dict(image="image", text="reflection", audio="audio", label="label")

  c.input = ml_collections.ConfigDict()
  c.input.batch_size = 32 if arg.runlocal else 128
  c.input.max_text_len = 36  # the longest possible reflection is 34 tokens
  c.input.num_threads = 1

  c.model = ml_collections.ConfigDict()
  c.model.modalities = parse_modalities(arg.modalities)
  c.model.dtype = "float32"  # compute dtype; "bfloat16" on accelerators
  c.model.param_dtype = "float32"
  # Memory/speed knobs (README "Scale"): remat none|full|dots|dots_no_batch; scan stacks.
  c.model.block = dict(remat="none", scan=False)
  c.model.dropout_rate = 0.0
  c.model.image = dict(variant="nano/4" if arg.runlocal else "mu/4")
  c.model.text = dict(variant="nano" if arg.runlocal else "mu",
                      max_len=c.input.get_ref("max_text_len"))
  # 4,000 samples -> 30 frames of 32 ms every 16 ms x 16 mel bands -> 8 x 4 patches of 4.
  c.model.audio = dict(variant="nano/4" if arg.runlocal else "mu/4", sample_rate=8000,
                       n_fft=256, hop_length=128, n_mels=16)
  width = 32 if arg.runlocal else 64
  c.model.fusion = dict(kind="concat", depth=1, width=width, num_heads=2, mlp_dim=4 * width)
  c.model.heads = dict(label=dict(input="fused", pooling="cls"))
  c.losses = dict(label=1.0)
  c.task = dict(name="classification", main="label", label_smoothing=0.0)

  c.optimizer = adamw(3e-3 if arg.runlocal else 1e-3)
  c.schedule = dict(warmup_steps=5 if arg.runlocal else 50, decay="cosine", end_factor=0.0)

  # What trains: full | frozen_image | frozen_text | frozen_towers | lora | adapters
  # (mmjax.config.finetune; `rules` over parameter paths come first).
  c.finetune = finetune()

  c.update(scale())  # mesh: data parallel over every device; sharding rules; hosts
  c.checkpoint = dict(every_steps=c.log_every_steps * (3 if arg.runlocal else 10), keep=2)
  c.evals = dict(splits=("validation", "test"), every_steps=0, batch_size=200,
                 headline="test/accuracy")
  return c
