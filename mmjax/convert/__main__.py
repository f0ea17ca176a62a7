"""`python -m mmjax.convert --checkpoint DIR --kind KIND`: load DIR into the matching mmjax
tower (built from DIR/config.json, shapes only) and print what was loaded, new, ignored."""

from __future__ import annotations

import argparse
import sys

from mmjax.convert.hf_config import example_inputs, param_shapes, tower_from_hf_config
from mmjax.convert.load import load_pretrained
from mmjax.convert.names import KINDS


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m mmjax.convert", description=__doc__)
  parser.add_argument("--checkpoint", required=True,
                      help="directory with config.json and *.safetensors (PyTorch names)")
  parser.add_argument("--kind", required=True, choices=KINDS)
  args = parser.parse_args(argv)
  import transformers

  config = transformers.AutoConfig.from_pretrained(args.checkpoint)
  tower = tower_from_hf_config(config, args.kind)
  shapes = param_shapes(tower, *example_inputs(config, args.kind))
  _, report = load_pretrained(shapes, args.checkpoint, args.kind)
  print(report)
  return 0


if __name__ == "__main__":
  sys.exit(main())
