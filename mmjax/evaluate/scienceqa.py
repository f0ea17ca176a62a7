"""ScienceQA's accuracy breakdown (Lu et al., NeurIPS 2022, Table 4), and its printed table.

The paper reports accuracy on question groups besides the average:
  NAT, SOC, LAN  subject: natural, social, language science;
  TXT            questions with a text context (a non-empty hint);
  IMG            questions with an image context;
  NO             questions with neither;
  G1-6, G7-12    grades 1 to 6 and 7 to 12;
  Avg            all questions.
TXT and IMG overlap (a question can have both); NO is the rest. Evaluators report each as
`accuracy/<column>`; a group with no question in the split is left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# Column -> the `subject` class name it selects.
SUBJECTS = {"NAT": "natural science", "SOC": "social science", "LAN": "language science"}
COLUMNS = ("NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12", "Avg")
# Per-example batch keys the breakdown reads (int32 [N] each).
FEATURES = ("subject", "grade", "has_context", "has_image")


def breakdown(correct: np.ndarray, subject: np.ndarray, grade: np.ndarray,
              has_context: np.ndarray, has_image: np.ndarray,
              subject_names: Sequence[str]) -> dict[str, float]:
  """{column: accuracy} over the groups of COLUMNS that hold at least one question.

  Args:
    correct: bool [N], whether each question was answered correctly.
    subject: int [N], indices into `subject_names` (the `subject` ClassLabel's names).
    grade: int [N], 1..12.
    has_context, has_image: int or bool [N], 1 where the question has a text (hint) or
      an image context.
    subject_names: the class names of `subject`; those of SUBJECTS must be among them.
  """
  correct = np.asarray(correct, bool)
  subject, grade = np.asarray(subject), np.asarray(grade)
  text, image = np.asarray(has_context) != 0, np.asarray(has_image) != 0
  missing = [name for name in SUBJECTS.values() if name not in subject_names]
  if missing:
    raise ValueError(f"subject names {list(subject_names)} lack {', '.join(missing)}")
  groups = {column: subject == list(subject_names).index(name)
            for column, name in SUBJECTS.items()}
  groups.update({"TXT": text, "IMG": image, "NO": ~text & ~image,
                 "G1-6": (grade >= 1) & (grade <= 6), "G7-12": (grade >= 7) & (grade <= 12),
                 "Avg": np.ones_like(correct)})
  return {column: float(correct[groups[column]].mean()) for column in COLUMNS
          if groups[column].any()}


def format_breakdown(results: Mapping[str, Mapping[str, Any]]) -> str:
  """A table of percentages, one row per evaluation of `results` ({split: metrics}) that
  has the breakdown (`accuracy/NAT`, ...), columns in the paper's order, "-" for a group
  the split lacks, and its number of questions; "" when none has a breakdown.

      ScienceQA accuracy (%) by question group:
      split         NAT    SOC    LAN    TXT    IMG     NO   G1-6  G7-12    Avg      N
      test        81.20  70.10  ...                                          89.90   4241
  """
  rows = {split: metrics for split, metrics in results.items()
          if f"accuracy/{COLUMNS[-1]}" in metrics}
  if not rows:
    return ""
  width = max(len("split"), *map(len, rows)) + 1
  lines = ["ScienceQA accuracy (%) by question group:",
           "split".ljust(width) + "".join(c.rjust(7) for c in (*COLUMNS, "N"))]
  for split, metrics in rows.items():
    cells = [f"{100 * metrics[f'accuracy/{c}']:.2f}" if f"accuracy/{c}" in metrics else "-"
             for c in COLUMNS]
    cells.append(str(metrics.get("num_examples", "-")))
    lines.append(split.ljust(width) + "".join(cell.rjust(7) for cell in cells))
  return "\n".join(lines)
