r"""Knowledge tracing: predict each next response of simulated students from their history.

Dataset `edu_tracing` (built offline on first use): 20,000 training, 500 validation and
500 test students, each attempting 100 to 200 exercises (200 exercises over 10 skills).
Students follow item response theory with learning: a general ability, per-skill offsets
and a learning rate by which each attempt raises the skill practised (see
mmjax/data/builders/edu_tracing/students.py). The simulator's true success probability
`p_correct` is the oracle: its AUC is the ceiling.

Model: a causal Transformer over interactions (mmjax/models/tracing.py): token t is
exercise t and its skill, plus exercise/skill x response of step t - 1 and a position;
2 causal pre-norm blocks of width 32, then a logit per step (52k parameters). Loss:
binary cross-entropy on real steps. 2,000 steps of 32 students (about 3 epochs).

Command (CPU, 2 cores):
  python -m mmjax.main --config configs/edu/knowledge_tracing.py --workdir runs/tracing

Reaches (measured on 2 CPU cores, seed 0, 2,000 steps, with the CPU shared by other jobs:
27.9 min wall for 468 s user + 111 s system CPU time, i.e. about 5 minutes of both
cores alone):
  test AUC 0.8365 against the oracle's 0.8516: a gap of 0.0151 (validation 0.8353 vs
  0.8495, gap 0.0142); accuracy 0.760 (oracle 0.774). Baselines: per-exercise mean
  correctness of the training split 0.7620; that plus the student's shrunk running
  residual 0.8261.
  The gap is mostly in the first steps, where nothing is known about the student yet:
  over steps 0-19 the model reaches 0.8077 against the oracle's 0.8453 (gap 0.038), over
  steps 20+ 0.8400 against 0.8520 (gap 0.012), so longer sequences (more steps per
  student past the first) shrink the overall gap. (With 4,000 training students instead
  of 20,000, an earlier version of this model without `response_embedding` overfitted:
  test AUC 0.830 after 500 steps, 0.827 after 1,000, while its train loss fell to the
  oracle's 0.47 and its test log loss rose to 0.504.)
  Recommendation (`mmjax.tasks.knowledge_tracing.recommend`, target 0.7, all 200 exercises
  as candidates, 100 test students after at most 150 of their steps): the recommended
  exercise's true success probability is 0.068 from the target on average (a random
  exercise's: 0.252; recommending without the student's history: 0.185).
Smoke size for tests and laptops: `--config configs/edu/knowledge_tracing.py:runlocal`.
"""

import ml_collections

from mmjax.config import adamw, finetune, parse_arg, scale


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, runlocal=False, steps=0)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = arg.steps or (60 if arg.runlocal else 2000)
  c.log_every_steps = 10 if arg.runlocal else 50

  c.data = ml_collections.ConfigDict()
  c.data.name = "edu_tracing"
  c.data.data_dir = ml_collections.config_dict.placeholder(str)  # None: the tfds default
  c.data.cache = True  # 21,000 students, 25 MB: decode once
  c.data.train_split = "train"

  c.input = ml_collections.ConfigDict()
  c.input.batch_size = 32
  c.input.num_threads = 1

  width = 32
  c.model = ml_collections.ConfigDict()
  c.model.width = width
  c.model.depth = 1 if arg.runlocal else 2
  c.model.num_heads = 2
  c.model.mlp_dim = 4 * width
  c.model.max_len = 200  # edu_tracing's sequences have 200 slots
  c.model.dropout_rate = 0.0
  c.model.dtype = "float32"  # compute dtype; "bfloat16" on accelerators
  c.model.param_dtype = "float32"
  # Memory/speed knobs (README "Scale"): remat none|full|dots|dots_no_batch; scan stacks.
  c.model.block = dict(remat="none", scan=False)
  # No heads or loss weights: one logit per step, binary cross-entropy.
  c.task = dict(name="knowledge_tracing", early_steps=20)

  c.optimizer = adamw(3e-3 if arg.runlocal else 2e-3)
  c.schedule = dict(warmup_steps=10 if arg.runlocal else 100, decay="cosine", end_factor=0.0)
  c.finetune = finetune()

  c.update(scale())  # mesh: data parallel over every device; sharding rules; hosts
  c.checkpoint = dict(every_steps=c.log_every_steps * (2 if arg.runlocal else 10), keep=2)
  c.evals = dict(splits=("validation", "test"), every_steps=0 if arg.runlocal else 500,
                 batch_size=64, headline="test/auc")
  return c
