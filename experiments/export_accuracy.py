"""Accuracy and size of a run's `mmjax export`, float32 and int8, through the artifact.

    .venv/bin/python -m mmjax.main --config configs/edu/grading.py --workdir runs/grading
    .venv/bin/python experiments/export_accuracy.py --workdir runs/grading [--split test]

Exports the newest checkpoint of the workdir twice (`<workdir>/export` with float32
weights, `<workdir>/export_int8` with int8 weight-only quantization), then predicts every
example of the split with `mmjax.serving` (raw images and question strings in, as a
server would get them) and prints the main head's accuracy and the artifact sizes of both,
and how often the two agree. The dataset is read with mmjax.data only to get the examples
and their labels.

Measured 2026-11-24 on 2 CPU cores (configs/edu/grading.py, seed 0, 1,000 steps, eval.json
test accuracy 0.9675; edu_grading 1.1.0):

| weights | accuracy | params.safetensors | model.jaxexport | whole export |
|---|---|---|---|---|
| float32 | 0.9675 | 1394.1 KiB | 129.8 KiB | 1531.7 KiB |
| int8 | 0.9678 | 407.8 KiB | 142.6 KiB | 561.0 KiB |

int8 - float32: +0.03 accuracy points; the predictions agree on 99.97% of the 3,600.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from mmjax import export as export_lib
from mmjax import serving


def evaluate(predictor: serving.Predictor, source, fields: dict, label: str,
             batch_size: int = 256) -> np.ndarray:
  """The predicted class index of the main head for every example of `source`, and the
  accuracy against the `label` feature."""
  predictions, labels = [], []
  for start in range(0, len(source), batch_size):
    rows = [source[i] for i in range(start, min(start + batch_size, len(source)))]
    images = [r[fields["image"]] for r in rows] if "image" in fields else None
    texts = ([r[fields["text"]].decode("utf-8") for r in rows] if "text" in fields else None)
    out = predictor.run(predictor.batch(images, texts))[predictor.main]
    predictions.append(out["prediction"])
    labels.append([int(r[label]) for r in rows])
  return np.concatenate(predictions), np.concatenate(labels)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--split", default="test")
  args = parser.parse_args()

  from mmjax.data import pipeline  # noqa: PLC0415  (only to read the split)

  config = export_lib.workdir_config(args.workdir)
  source = pipeline.open_dataset(config.data).source(args.split)
  fields = {m: config.data.fields[m] for m in ("image", "text") if m in config.data.fields}
  main_head = config.task.get("main", "label")
  label = config.data.fields[main_head]

  rows, predictions = [], {}
  for name, quantize, out in (("float32", None, "export"), ("int8", "int8", "export_int8")):
    report = export_lib.export(args.workdir, os.path.join(args.workdir, out),
                               quantize=quantize)
    predictor = serving.load(report["directory"])
    started = time.perf_counter()
    predicted, labels = evaluate(predictor, source, fields, label)
    seconds = time.perf_counter() - started
    predictions[name] = predicted
    rows.append((name, float(np.mean(predicted == labels)), report["sizes"]["params.safetensors"],
                 report["sizes"]["model.jaxexport"], report["total_bytes"], seconds))
  print(f"\n{args.workdir}, step {report['step']}, {args.split} split ({len(source)} examples), "
        f"head '{main_head}':\n")
  print("| weights | accuracy | params.safetensors | model.jaxexport | whole export | "
        "predict time |")
  print("|---|---|---|---|---|---|")
  for name, accuracy, params, function, total, seconds in rows:
    print(f"| {name} | {accuracy:.4f} | {params / 1024:.1f} KiB | {function / 1024:.1f} KiB | "
          f"{total / 1024:.1f} KiB | {seconds:.1f} s |")
  drop = 100 * (rows[0][1] - rows[1][1])
  agree = float(np.mean(predictions["float32"] == predictions["int8"]))
  print(f"\nint8 - float32: {-drop:+.2f} accuracy points; weights {rows[0][2] / rows[1][2]:.2f}x "
        f"smaller; predictions agree on {agree:.2%} of the examples")


if __name__ == "__main__":
  main()
