"""Pieces the ablation sweep files share."""

from experiments.sweep import Run, Sweep

# The workdir of `pretrain_sweep()`'s run, as a fine-tuning sweep's arg names it.
PRETRAINED = "{out}/pretrain/itc_itm_mlm/seed_0"


def pretrain_sweep() -> Sweep:
  """One ITC + ITM + MLM pre-training run on edu_scenes (configs/pretrain/itc_itm_mlm.py),
  the starting point of the fine-tuning sweeps that follow it in a file."""
  return Sweep(name="pretrain", config="configs/pretrain/itc_itm_mlm.py",
               rows=[Run("itc_itm_mlm")], seeds=(0,),
               metrics=("test/i2t_r1", "test/t2i_r1", "zeroshot/accuracy"))
