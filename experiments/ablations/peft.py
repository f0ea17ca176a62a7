r"""Parameter-efficient fine-tuning: what do frozen towers, LoRA and adapters cost and keep?

Question: starting from the same image-text pre-training run (ITC + ITM + MLM on
`edu_scenes`, configs/pretrain/itc_itm_mlm.py), how much of full fine-tuning's grading
accuracy does each `config.finetune.mode` keep, with how many trainable parameters, at
what step time? Rows: `full`; `frozen_towers` (only fusion and heads train); `lora` of
rank 4 and 16 on the towers' query and value kernels (fusion and heads train too);
`adapters` (bottleneck 16 after every tower block).

Command (a pre-training run, then 5 modes x 3 seeds):

  python -m experiments.sweep experiments/ablations/peft.py --parallel 4

Expected ordering: full >= LoRA-16 >= LoRA-4 ~ adapters > frozen towers in accuracy, the
reverse in trainable parameters; step time is lower where fewer parameters get gradients
and optimizer updates (frozen towers lowest), but LoRA and adapters still back-propagate
through the towers to reach their factors.

Results: not measured yet. The GPU time of the session that wrote this file went to the
fusion ablation; on 2 CPU cores the sweep takes about 2.3 hours (17 min of pre-training,
then 15 fine-tuning runs of about 8 min). Smoke-tested end to end with
`--arg runlocal,steps=12 --seeds 0`.
"""

from experiments.ablations.common import PRETRAINED, pretrain_sweep
from experiments.sweep import Run, Sweep

SWEEPS = [
    pretrain_sweep(),
    Sweep(
        name="finetune",
        config="configs/pretrain/grading_finetune.py",
        arg=f"pretrained={PRETRAINED}",
        rows=[Run("full", overrides={"finetune.mode": "full"}),
              Run("frozen_towers", overrides={"finetune.mode": "frozen_towers"}),
              Run("lora_4", overrides={"finetune.mode": "lora", "finetune.lora.rank": 4,
                                       "finetune.lora.alpha": 8.0}),
              Run("lora_16", overrides={"finetune.mode": "lora", "finetune.lora.rank": 16,
                                        "finetune.lora.alpha": 32.0}),
              Run("adapters", overrides={"finetune.mode": "adapters"})],
        seeds=(0, 1, 2),
        metrics=("test/accuracy", "validation/accuracy", "params/trainable",
                 "train/steps_per_sec"),
        overrides={"evals.every_steps": 0},
    ),
]
