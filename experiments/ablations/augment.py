r"""Augmentation ablation: does training-time augmentation help when training images are scarce?

Two sweeps, both on configs/edu/grading.py (towers, auxiliary heads and fusion unchanged),
RandAugment-lite (`config.augment="randaugment(n=2, m=5)"`, mmjax/data/augment.py)
against no augmentation, 3 seeds each.

## grading_200_images: 200 handwritten images, every question about them (the headline)

`config.data.train_groups=dict(feature="image_id", count=200)` keeps the 3,200 training
questions (16 per image) about the first 200 of the 1,257 training images, so the text
side has enough questions to learn the arithmetic while the image side sees 200 digits
(about 20 per class). 500 steps of batch 128, one evaluation at the end.

Command (6 runs, 2 at once; 23 min on 2 CPU cores that other jobs shared):

  python -m experiments.sweep experiments/ablations/augment.py --only grading_200_images \
      --parallel 2 --out runs/sweeps/augment

Expected ordering: augmentation above none on the digit head, and so on the grade, which
needs the digit; the answer head (text tower) should not care.

Results (measured 2026-11-25; test split 3,600 questions, validation 1,432; mean ± sample
std over seeds 0, 1, 2; experiments/results/augment/grading_200_images.{md,csv,png}):

| row | test grade acc. | test digit head | test answer head | validation grade acc. |
|---|---|---|---|---|
| none | 0.719 ± 0.009 | 0.635 ± 0.026 | 0.761 ± 0.017 | 0.699 ± 0.028 |
| randaugment | **0.802 ± 0.023** | **0.785 ± 0.028** | 0.827 ± 0.021 | 0.784 ± 0.031 |

Per seed, test grade 0.727 / 0.709 / 0.721 without augmentation and 0.806 / 0.778 / 0.823
with it: every seed gains, by 6.9 to 10.2 points. The digit head gains 15 points. The
answer head gained too (0.76 -> 0.83), unexpectedly; a guess, not measured further: the
grade loss flows into the text tower through fusion, and a better-read digit makes that
signal less noisy.

Ensembles of the three seeds of each row (`mmjax eval --workdir .../seed_0 --workdir
.../seed_1 --workdir .../seed_2`, mean of logits; results in
experiments/results/augment/grading_200_images_ensemble.json): test grade 0.742 without
augmentation (members 0.727 / 0.709 / 0.721) and 0.836 with it (members 0.806 / 0.778 /
0.823); digit head 0.714 and 0.856.

## grading_200: 200 training examples (200 questions, 185 images)

Question: with 200 training examples of homework grading (`train[:200]`: 185 distinct
handwritten digits, 13 to 30 per class, and 200 questions; the full split has 20,128
examples), does augmenting the images (`config.augment`, mmjax/data/augment.py) help the
model, and where? Same config as
configs/edu/grading.py (towers, auxiliary heads, fusion) otherwise, with a short schedule
so that the sweep fits 25 minutes of 2 shared CPU cores: 400 steps of batch 64 (128
epochs of the 200 examples), one evaluation at the end.

Command (2 rows x 3 seeds = 6 runs; the workdirs, checkpoints included, stay in
runs/sweeps/augment/grading_200/<row>/seed_<seed>):

  python -m experiments.sweep experiments/ablations/augment.py --only grading_200 \
      --parallel 1 --out runs/sweeps/augment

Expected ordering: the digit head (image tower, 10 classes from ~18 images each) is
where augmentation can act, so `randaugment` above `none` on digit accuracy. The grade
needs the question's answer too, and 200 arithmetic questions are too few for the text
tower to learn arithmetic (the answer head stays near 0.2), so the grade should stay near
chance (0.5) with or without augmentation: image augmentation cannot make up for the
text side.

Results (measured 2026-11-24 on 2 CPU cores shared with 3 other jobs, load average 8-11;
19.4 min for the 6 runs, 2.7-3.9 min each; test split 3,600 questions, validation 1,432;
mean ± sample std over seeds 0, 1, 2; experiments/results/augment/grading_200.{md,csv,png}):

| row | test grade acc. | test digit head | test answer head | val. digit head |
|---|---|---|---|---|
| none | 0.505 ± 0.007 | 0.605 ± 0.013 | 0.244 ± 0.009 | 0.594 ± 0.042 |
| randaugment | 0.500 ± 0.004 | **0.680 ± 0.035** | 0.241 ± 0.006 | 0.637 ± 0.024 |

Per seed, the test digit head reached 0.592 / 0.606 / 0.617 without augmentation and
0.686 / 0.642 / 0.711 with it: every seed gains, by 3.6 to 9.4 points (mean +7.5). The
grade, the task's accuracy, stays at chance in both rows, as does the answer head (0.24,
10 classes): the ordering expected above. With 200 examples the model cannot read the
questions, and augmenting the images does not change that, so augmentation improves the
image tower and not the grade. Augmented runs trained at 2.5-3.0 steps/s against
3.4-4.3 (the host-side ops share the loaded CPU with the training step).

Before the sweep, single runs (seed 0, 400 steps of batch 128, the default batch, so not
comparable with the table) chose its row; test grade / digit head / answer head:
  none                                                        0.499 / 0.642 / 0.231
  translate(0.125)|color_jitter(brightness=0.3,contrast=0.3)  0.503 / 0.683 / 0.211
  randaugment(n=2, m=5)                                       0.501 / 0.769 / 0.232
  random_resized_crop(scale=(0.7, 1.0))|translate(0.1)|
      color_jitter(0.3)|token_dropout(0.1)                    0.489 / 0.631 / 0.245
RandAugment-lite helped the digit head most; the crop combination did not help it at all
(a 0.7 crop of an 8x8 digit can lose a stroke), and token dropout did not lift the answer
head beyond seed noise (dropping a number from an arithmetic question changes its answer).

Ops: `randaugment(n=2, m=5)` is RandAugment-lite: two draws from identity, brightness and
contrast (factor 1 ± 0.45), translate x / y (15 % of the size), rotate (15 degrees), shear
x / y (0.15) and posterize (6 bits), all label-safe for digits. `flip_lr` is not, and this
config refuses it (`config.data.flip_safe=False`).

The 6 workdirs keep their final checkpoints (step 400): runs/sweeps/augment/grading_200/
{none,randaugment}/seed_{0,1,2}, e.g. for an ensemble of the 3 seeds of one row.
"""

from experiments.sweep import Run, Sweep

RANDAUGMENT = "randaugment(n=2, m=5)"
# Both sweeps compare the same two rows.
ROWS = [Run("none"), Run("randaugment", overrides={"augment": RANDAUGMENT})]

SWEEPS = [
    Sweep(
        name="grading_200",
        config="configs/edu/grading.py",
        rows=ROWS,
        seeds=(0, 1, 2),
        metrics=("test/accuracy", "test/written_digit/accuracy", "test/answer/accuracy",
                 "validation/written_digit/accuracy"),
        # 200 training examples, a short schedule, one evaluation at the end.
        overrides={"data.train_split": "train[:200]", "input.batch_size": 64,
                   "total_steps": 400, "evals.every_steps": 0},
    ),
    Sweep(
        name="grading_200_images",
        config="configs/edu/grading.py",
        rows=ROWS,
        seeds=(0, 1, 2),
        metrics=("test/accuracy", "test/written_digit/accuracy", "test/answer/accuracy",
                 "validation/accuracy"),
        # Every question (16 each) about 200 handwritten images: 3,200 examples.
        overrides={"data.train_groups.feature": "image_id", "data.train_groups.count": 200,
                   "total_steps": 500, "evals.every_steps": 0},
    ),
]
