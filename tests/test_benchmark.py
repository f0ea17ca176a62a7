"""experiments/benchmark.py runs end to end (mmjax rows and the loader; the PyTorch peer
needs the `bench` extra and is left out here). Its figures are not checked: timings
belong in the benchmark's own output, not in tests."""

import json
import subprocess
import sys

from conftest import REPO


def test_the_benchmark_prints_its_table_and_writes_its_figures(data_dir, grading, tmp_path):
  figures = tmp_path / "bench.json"
  command = [sys.executable, "experiments/benchmark.py", "--skip", "vilt", "co_attention",
             "--width", "32", "--depth", "1", "--heads", "2", "--mlp-dim", "64",
             "--image-size", "16", "--patch-size", "8", "--tokens", "8", "--batch", "8",
             "--steps", "2", "--warmup", "1", "--data-dir", data_dir, "--json", str(figures)]
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr[-3000:]
  assert "| mmjax `merged` |" in result.stdout
  rows = {row["name"]: row for row in json.loads(figures.read_text())["rows"]}
  assert rows["mmjax `merged`"]["examples_per_s"] > 0
  assert rows["mmjax `merged`"]["params"] > 0
  assert sum(name.startswith("data loader") for name in rows) == 2
