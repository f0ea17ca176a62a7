r"""Pre-trained vs scratch initialisation across fine-tuning data sizes (learning curves).

Question: how much labelled grading data does image-text pre-training (ITC + ITM + MLM on
`edu_scenes`, configs/pretrain/itc_itm_mlm.py) save? Fine-tune homework grading
(configs/pretrain/grading_finetune.py, 1,000 steps of batch 128) on the first 500,
2,000, 8,000 and all 20,128 training examples (`config.data.train_split="train[:N]"`),
from the pre-trained towers and fusion or from random initialisation (same tokenizer,
architecture and schedule).

Command (a pre-training run, then 4 sizes x 2 initialisations x 2 seeds):

  python -m experiments.sweep experiments/ablations/pretraining.py --parallel 4

Expected ordering: both curves rise with data; the pre-trained curve lies above the
scratch curve, by most at the smallest sizes, where a model from scratch must learn to
read digits and questions from few examples, and the gap closes with the full split.

Results: not measured yet (about 2.5 hours on 2 CPU cores: 17 min of pre-training, then
16 fine-tuning runs of about 8 min). Smoke-tested end to end with
`--arg runlocal,steps=12 --seeds 0`.
"""

from experiments.ablations.common import PRETRAINED, pretrain_sweep
from experiments.sweep import Run, Sweep

SIZES = (500, 2000, 8000, 0)  # 0: the whole training split


def _rows(init: str) -> list[Run]:
  arg = f"pretrained={PRETRAINED}" + (",scratch" if init == "scratch" else "")
  return [Run(f"{init}_{size or 'all'}", arg=arg,
              overrides={"data.train_split": f"train[:{size}]" if size else "train"})
          for size in SIZES]


SWEEPS = [
    pretrain_sweep(),
    Sweep(
        name="finetune",
        config="configs/pretrain/grading_finetune.py",
        rows=[*_rows("pretrained"), *_rows("scratch")],
        seeds=(0, 1),
        metrics=("test/accuracy", "validation/accuracy", "test/written_digit/accuracy"),
        overrides={"evals.every_steps": 0},
    ),
]
