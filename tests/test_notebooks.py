"""The analysis notebooks run headless on real (tiny) runs, and the `mmjax.analysis`
functions they are built on.

Each notebook (a jupytext percent-format .py file) is read with jupytext, gets its
parameter values in a cell inserted after the one tagged "parameters" (as papermill does)
and runs in a fresh Jupyter kernel through nbclient, from the repository root with
MPLBACKEND=Agg; any cell error fails the test with that cell's traceback.
"""

import csv
import json
import math
import os
import re
import shutil
import sys

import numpy as np
import pytest

from conftest import REPO, load_config

NOTEBOOK_TIMEOUT_S = 600  # per cell
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def execute_notebook(name: str, **parameters) -> str:
  """Runs `notebooks/<name>.py` (or the .py file at path `name`) with `parameters` and
  returns everything its cells printed (stdout and stderr streams, text results)."""
  import jupytext
  import nbformat
  from nbclient import NotebookClient
  from nbclient.exceptions import CellExecutionError

  path = name if name.endswith(".py") else REPO / "notebooks" / f"{name}.py"
  notebook = jupytext.read(path, fmt="py:percent")
  tagged = [i for i, cell in enumerate(notebook.cells)
            if "parameters" in cell.metadata.get("tags", [])]
  assert len(tagged) == 1, f"{name}: expected one cell tagged 'parameters', found {len(tagged)}"
  source = "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
  injected = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
  notebook.cells.insert(tagged[0] + 1, injected)
  client = NotebookClient(notebook, timeout=NOTEBOOK_TIMEOUT_S, kernel_name="python3",
                          resources={"metadata": {"path": str(REPO)}})
  try:
    # The kernel inherits this process's environment (conftest's 8 CPU devices), so a
    # notebook reproduces the numbers of runs trained in this session exactly.
    client.execute(env=dict(os.environ, MPLBACKEND="Agg"))
  except CellExecutionError as error:
    pytest.fail(f"{name}: a cell failed:\n{ANSI.sub('', str(error))}", pytrace=False)
  return cell_output(notebook)


def cell_output(notebook) -> str:
  texts = []
  for cell in notebook.cells:
    for output in cell.get("outputs", []):
      if output.output_type == "stream":
        texts.append(output.text)
      elif "data" in output and "text/plain" in output.data:
        texts.append(output.data["text/plain"] + "\n")
  return "".join(texts)


def assert_figures(directory, *names):
  for figure in names:
    path = os.path.join(directory, figure)
    assert os.path.exists(path), f"{figure} was not saved in {directory}"
    assert os.path.getsize(path) > 10_000, f"{figure} is only {os.path.getsize(path)} bytes"


def test_notebook_kernel_is_this_python(tmp_path):
  """The kernel is the interpreter running the tests (the venv's: jupyter_client starts
  the "python3" kernel spec with sys.executable), parameters replace the defaults, and the
  kernel starts in the repository root."""
  import jupytext

  path = tmp_path / "check.py"
  path.write_text('# %% tags=["parameters"]\nx = 1\n\n# %%\nimport os\nimport sys\n\n'
                  "print(sys.executable, x, os.getcwd())\n")
  assert jupytext.read(path).cells[0].metadata["tags"] == ["parameters"]
  assert execute_notebook(str(path), x=2).split() == [sys.executable, "2", str(REPO)]


def test_a_failing_cell_fails_with_its_error(tmp_path):
  path = tmp_path / "failing.py"
  path.write_text('# %% tags=["parameters"]\nx = 1\n\n# %%\nprint("fine")\n\n'
                  '# %%\nraise ValueError(f"broken {x}")\n')
  with pytest.raises(pytest.fail.Exception, match=r"(?s)a cell failed.*ValueError: broken 3"):
    execute_notebook(str(path), x=3)


# -- analyze_run --------------------------------------------------------------------------


def test_analyze_run_notebook(runlocal_workdir):
  out = execute_notebook("analyze_run", workdir=runlocal_workdir)
  assert "records, steps 10..60" in out
  assert "written_digit/accuracy" in out  # the final-evaluation table
  assert_figures(os.path.join(runlocal_workdir, "plots"), "curves.png", "confusion.png")


# -- load_run and predictions -----------------------------------------------------------------


@pytest.fixture(scope="module")
def grading_run(runlocal_workdir, data_dir):
  from mmjax import analysis

  return analysis.load_run(runlocal_workdir, data_dir)


def read_eval(workdir):
  with open(os.path.join(workdir, "eval.json")) as f:
    return json.load(f)


def test_run_config_rebuilds_the_config_the_run_was_trained_with(runlocal_workdir, data_dir):
  from mmjax import analysis

  original = load_config("configs/edu/grading.py", "runlocal", **{"data.data_dir": data_dir})
  rebuilt = analysis.run_config(runlocal_workdir)
  assert rebuilt.to_dict() == original.to_dict()  # tuples are tuples again
  assert analysis.run_config(runlocal_workdir, "/elsewhere").data.data_dir == "/elsewhere"


def test_load_run_errors_name_the_workdir(tmp_path, runlocal_workdir):
  from mmjax import analysis
  from mmjax.config import ConfigError

  with pytest.raises(ConfigError, match=f"^{re.escape(str(tmp_path))}: no config.json") as error:
    analysis.load_run(str(tmp_path))
  assert "\n" not in str(error.value)
  shutil.copy(os.path.join(runlocal_workdir, "config.json"), tmp_path)
  with pytest.raises(ConfigError, match=f"^{re.escape(str(tmp_path))}: no checkpoint in "):
    analysis.load_run(str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()  # reading creates nothing


def test_predictions_reproduce_the_runs_evaluation(grading_run, runlocal_workdir):
  """The restored parameters predict exactly what the run's own evaluation reported."""
  from mmjax import analysis

  test = read_eval(runlocal_workdir)["test"]
  assert grading_run.step == read_eval(runlocal_workdir)["step"] == 60
  preds = analysis.predictions(grading_run, "test")
  # 3,600 examples in batches of 256: the padding of the last batch is left out.
  assert len(preds.label) == test["num_examples"] == 3600
  assert preds.accuracy == test["accuracy"]
  assert preds.confusion_matrix().tolist() == test["confusion_matrix"]
  assert preds.confusion_matrix().sum() == len(preds.index)
  digits = preds.heads["written_digit"]
  assert np.mean(digits["label"] == digits["prediction"]) == test["written_digit/accuracy"]
  assert preds.head == "label" and preds.class_names == ("incorrect", "correct")
  np.testing.assert_allclose(preds.probabilities.sum(axis=1), 1.0, atol=1e-5)
  assert (preds.prediction == preds.probabilities.argmax(axis=1)).all()
  assert preds.images.shape == (3600, 8, 8, 1) and preds.images.dtype == np.uint8
  assert preds.images.max() > 200 and preds.images.min() == 0
  source = grading_run.exp.dataset.source("test")
  assert [preds.texts[i] for i in (0, 3599)] == [
      source[i]["question"].decode() for i in (0, 3599)]
  assert (preds.label == [source[i]["label"] for i in range(3600)]).all()

  first = analysis.predictions(grading_run, "test", limit=300, inputs=False)
  assert len(first.label) == 300 and first.images is None and first.texts is None
  assert (first.prediction == preds.prediction[:300]).all()
  rows = preds.misclassified[:3]
  shown = analysis.examples(grading_run, "test", preds.index[rows])
  assert shown.texts == [preds.texts[i] for i in rows]
  assert (shown.images == preds.images[rows]).all()
  assert (shown.batch["label"] == preds.label[rows]).all()


def test_predictions_notebook(runlocal_workdir):
  out = execute_notebook("predictions", workdir=runlocal_workdir, num_shown=6)
  test = read_eval(runlocal_workdir)["test"]
  wrong = 3600 - int(np.trace(test["confusion_matrix"]))
  assert (f"test accuracy {test['accuracy']:.4f} on 3600 examples, {wrong} misclassified"
          in out), out
  assert re.search(r"^incorrect +\d+ +[\d.]+ +[\d.]+$", out, re.MULTILINE), out
  # the six most confident mistakes, each with its question and both classes
  mistakes = re.findall(r"^#\d+ ['\"].+['\"]: true (\w+), predicted (\w+) \(p=", out,
                        re.MULTILINE)
  assert len(mistakes) == min(6, wrong) and all(t != p for t, p in mistakes)
  assert_figures(os.path.join(runlocal_workdir, "plots"), "predictions_confusion_test.png",
                 "predictions_errors_test.png")


# -- attention maps ---------------------------------------------------------------------------

CROSS = "fusion/cross_encoder/block_0/cross_attention"


@pytest.fixture(scope="module")
def shapes_run(shapes_workdir, data_dir):
  from mmjax import analysis

  return analysis.load_run(shapes_workdir, data_dir)


def test_attention_maps_of_a_trained_cross_attention_run(shapes_run):
  from mmjax import analysis

  shown = analysis.examples(shapes_run, "test", range(64))
  maps = analysis.attention_maps(shapes_run, shown.batch)
  assert maps.layers == [CROSS] and maps.grid == (4, 4)
  weights = maps.weights[CROSS]
  assert weights.shape == (64, 2, 24, 17)  # examples, heads, question tokens, image tokens
  # The image tokens are all the keys of text -> image cross-attention: rows sum to 1.
  np.testing.assert_allclose(weights.sum(axis=-1), 1.0, atol=1e-5)
  assert (maps.query_mask == shown.batch["text_mask"]).all()
  assert maps.queries[0][0] == "[CLS]" and maps.queries[0][-1] == "[PAD]"
  # Head 0 of the question's [CLS] is trained to attend to the asked object's cell (after
  # the image [CLS]); reading the right slice, it does on held-out examples.
  found = maps.patches(CROSS, query=0, head=0).reshape(64, 16).argmax(axis=1)
  assert np.mean(found == shown.batch["object_cell"]) > 0.8
  assert maps.patches(CROSS).shape == (64, 4, 4)
  # The same forward pass gives the same predictions as the predict step.
  preds = analysis.predictions(shapes_run, "test", limit=64, inputs=False)
  assert (maps.outputs["answer"]["prediction"] == preds.prediction).all()
  np.testing.assert_allclose(maps.outputs["answer"]["probabilities"], preds.probabilities,
                             atol=1e-5)


def test_attention_maps_under_merged_and_concat_fusion(data_dir):
  """merged: the rows of the fused [CLS] and the text tokens, the columns of the image
  tokens, of the one self-attention over [fused CLS, image tokens, text tokens];
  co_attention: the text stream's cross-attention; concat: a one-line error."""
  import jax

  from mmjax import analysis
  from mmjax.config import ConfigError
  from mmjax.tasks.classification import attention_logits
  from mmjax.train import loop

  def fresh_run(arg):
    exp = loop.build_experiment(load_config("configs/edu/shapes_relational.py", arg,
                                            **{"data.data_dir": data_dir}))
    return analysis.Run(None, exp, loop.initial_params(exp, pretrained=False), 0)

  run = fresh_run("runlocal,fusion=merged")
  shown = analysis.examples(run, "validation", range(3))
  maps = analysis.attention_maps(run, shown.batch)
  layer = "fusion/encoder/block_0/self_attention"
  assert maps.layers == [layer] and maps.weights[layer].shape == (3, 2, 1 + 24, 17)
  assert maps.queries[0][:2] == ["[fused CLS]", "[CLS]"] and maps.query_mask[:, 0].all()
  sown = jax.jit(lambda params, batch: run.exp.model.apply(
      {"params": params}, batch, mutable=["intermediates"])[1]["intermediates"])
  full = np.asarray(jax.nn.softmax(attention_logits(sown(run.params, shown.batch), layer)))
  assert full.shape == (3, 2, 1 + 17 + 24, 1 + 17 + 24)
  np.testing.assert_allclose(maps.weights[layer][:, :, 0], full[:, :, 0, 1:18], atol=1e-6)
  np.testing.assert_allclose(maps.weights[layer][:, :, 1:], full[:, :, 18:, 1:18], atol=1e-6)
  assert (maps.weights[layer].sum(axis=-1) < 1).all()

  run = fresh_run("runlocal,fusion=co_attention,attend=0")
  maps = analysis.attention_maps(run, shown.batch)
  assert maps.layers == ["fusion/block_0/text/cross_attention"]  # the text stream's
  np.testing.assert_allclose(maps.weights[maps.layers[0]].sum(axis=-1), 1.0, atol=1e-5)

  concat = analysis.Run(None, loop.build_experiment(load_config(
      "configs/edu/shapes_relational.py", "runlocal,fusion=concat,attend=0",
      **{"data.data_dir": data_dir})), None, 0)
  with pytest.raises(ConfigError, match="^the run: fusion kind 'concat' has no attention "
                     "between modalities"):
    analysis.attention_maps(concat, shown.batch)


def test_attention_maps_notebook(shapes_workdir):
  out = execute_notebook("attention_maps", workdir=shapes_workdir, num_examples=3)
  assert ("fusion cross_attention | 1 layer(s) x 2 heads | image tokens: [CLS] + 4x4 patches"
          in out), out
  assert f"layer {CROSS} (3, 2, 24, 17)" in out
  assert len(re.findall(r"^#\d ['\"].+\?['\"]: true \S+, predicted \S+ \(p=", out,
                        re.MULTILINE)) == 3
  assert re.search(rf"^{CROSS}: most attended patch .*\[CLS\]->\(\d, \d\)", out,
                   re.MULTILINE), out
  assert_figures(os.path.join(shapes_workdir, "plots"), "attention_test.png",
                 "attention_tokens_test.png")


# -- ablation tables --------------------------------------------------------------------------

METRICS = ["test/accuracy", "validation/accuracy", "test/accuracy/relational",
           "train/steps_per_sec", "params/trainable", "params/total", "train/mfu"]


def write_results(directory):
  """A sweep's results.csv: 2 sub-sweeps; relational: 2 rows x 2 seeds, one empty cell;
  grading: 1 row, one seed failed; train/mfu never measured (empty everywhere)."""
  rows = [
      ("relational", "cross_attention", 0, "done", 0.90, 0.91, 0.85, 10.0, 120000, 120000),
      ("relational", "cross_attention", 1, "done", 0.80, 0.83, 0.75, 12.0, 120000, 120000),
      ("relational", "merged", 0, "done", 0.70, "", 0.60, 8.0, 90000, 90000),
      ("relational", "merged", 1, "done", 0.74, 0.72, 0.66, 8.5, 90000, 90000),
      ("grading", "cross_attention", 0, "done", 0.95, 0.96, "", 20.0, 50000, 60000),
      ("grading", "cross_attention", 1, "failed", "", "", "", "", "", ""),
  ]
  with open(os.path.join(directory, "results.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["sweep", "run", "seed", "status", "workdir", "minutes", *METRICS])
    for sweep, run, seed, status, *values in rows:
      writer.writerow([sweep, run, seed, status, f"runs/sweep/{sweep}/{run}/{seed}", 1.5,
                       *values, ""])


def test_summarize_means_and_stds_over_seeds(tmp_path):
  from mmjax import analysis
  from mmjax.config import ConfigError

  write_results(tmp_path)
  results = analysis.read_results(str(tmp_path))
  assert results.metrics == METRICS[:-1]  # train/mfu has no value; minutes is no metric
  rows = analysis.summarize(results)
  assert [(r.sweep, r.run, r.seeds, r.failed) for r in rows] == [
      ("relational", "cross_attention", [0, 1], 0), ("relational", "merged", [0, 1], 0),
      ("grading", "cross_attention", [0], 1)]
  assert rows[0].mean["test/accuracy"] == pytest.approx(0.85)
  assert rows[0].std["test/accuracy"] == pytest.approx(math.sqrt(0.005))  # ddof=1
  assert rows[1].count["validation/accuracy"] == 1 and math.isnan(rows[1].std[
      "validation/accuracy"])
  assert rows[2].count["test/accuracy/relational"] == 0  # the failed seed is not counted
  assert rows[2].values["test/accuracy"] == [0.95]
  only = analysis.summarize(results, ["minutes"])
  assert only[0].mean == {"minutes": 1.5}
  with pytest.raises(ConfigError, match="no column test/f1 in results.csv"):
    analysis.summarize(results, ["test/f1"])
  table = analysis.format_table(rows[:2], ["test/accuracy", "params/total"]).splitlines()
  assert table[0].split() == ["run", "seeds", "failed", "test/accuracy", "params/total"]
  assert table[2].split() == ["cross_attention", "2", "0", "0.850", "±", "0.071", "120,000",
                              "±", "0"]


def test_ablation_tables_notebook(tmp_path):
  write_results(tmp_path)
  out = execute_notebook("ablation_tables", sweep_dir=str(tmp_path), metrics=None)
  assert "6 runs in 2 sub-sweep(s): relational, grading" in out
  tables = {name: block.strip().splitlines()
            for name, block in re.findall(r"== (\w+) ==\n(.*?)(?:\n\n|$)", out, re.DOTALL)}
  assert list(tables) == ["relational", "grading"]
  assert tables["relational"][0].split()[:5] == ["run", "seeds", "failed", "test/accuracy",
                                                 "validation/accuracy"]
  # columns: test/accuracy, validation/accuracy, test/accuracy/relational, steps/s, params x2
  assert tables["relational"][2].split() == [
      "cross_attention", "2", "0", "0.850", "±", "0.071", "0.870", "±", "0.057", "0.800", "±",
      "0.071", "11.0", "±", "1.4", "120,000", "±", "0", "120,000", "±", "0"]
  assert tables["relational"][3].split()[:8] == ["merged", "2", "0", "0.720", "±", "0.028",
                                                 "0.720", "0.630"]
  assert tables["grading"][2].split() == ["cross_attention", "1", "1", "0.950", "0.960", "—",
                                          "20.0", "50,000", "60,000"]
  assert "grading/cross_attention seed 1: failed" in out
  assert_figures(tmp_path / "plots", "relational.png", "grading.png")
