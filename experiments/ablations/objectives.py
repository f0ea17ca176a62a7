r"""Pre-training objectives: what do ITM and MLM add to contrastive ITC?

Question: pre-training on `edu_scenes` (configs/pretrain/itc_itm_mlm.py, 500 steps of
batch 256) with ITC alone, ITC + ITM, or ITC + ITM + MLM (ALBEF's three), then
fine-tuning each on homework grading (configs/pretrain/grading_finetune.py, 1,000
steps): how do retrieval and zero-shot classification after pre-training, and accuracy
after fine-tuning, change?

Command (3 pre-training runs, then 3 objectives x 2 fine-tuning seeds):

  python -m experiments.sweep experiments/ablations/objectives.py --parallel 3

Expected ordering: retrieval R@1 similar across rows (ITC alone shapes the embedding
space that retrieval reads; ITM shares the towers and may help them slightly); ITM and
MLM train the fusion layers, which ITC alone leaves at their initialisation, so
fine-tuning accuracy early in training (and at the end, within seed noise) should rise
with the objectives that reach the fusion layers.

Results: not measured yet (about 1.5 hours on 2 CPU cores: 3 pre-training runs of 17 min,
then 6 fine-tuning runs of about 8 min). Smoke-tested end to end with
`--arg runlocal,steps=12 --seeds 0`.
"""

from experiments.sweep import Run, Sweep

OBJECTIVES = ("itc", "itc+itm", "itc+itm+mlm")


def _name(losses: str) -> str:
  return losses.replace("+", "_")


SWEEPS = [
    Sweep(name="pretrain", config="configs/pretrain/itc_itm_mlm.py",
          rows=[Run(_name(losses), arg=f"losses={losses}") for losses in OBJECTIVES],
          seeds=(0,),
          metrics=("test/i2t_r1", "test/t2i_r1", "test/i2t_r10", "zeroshot/accuracy")),
    Sweep(
        name="finetune",
        config="configs/pretrain/grading_finetune.py",
        rows=[Run(_name(losses), arg=f"pretrained={{out}}/pretrain/{_name(losses)}/seed_0,"
                                     f"pretrain_arg=losses={losses}")
              for losses in OBJECTIVES],
        seeds=(0, 1),
        metrics=("test/accuracy", "validation/accuracy"),
        overrides={"evals.every_steps": 0},
    ),
]
