"""Train-step throughput of mmjax next to Hugging Face `ViltForQuestionAnswering` (PyTorch).

    .venv/bin/python experiments/benchmark.py                      # CPU fp32, the small size
    .venv/bin/python experiments/benchmark.py --preset base --device gpu --dtype bfloat16 \\
        --torch-compile                                            # ViT-B/16 + BERT-base dims

Needs the `bench` extra (`pip install -e .[bench]`: torch and transformers).

What is measured, all in one process and one run:

* mmjax train steps, `merged` fusion (ViLT's single stream) and `co_attention` fusion (METER's
  two streams) at the same width, depth, heads and MLP size: the library's own step
  (`mmjax.train.step.make_train_step` + `jit_train_step`: forward, backward, global-norm
  clipping, AdamW, the step's metrics) on a 1-device mesh, built from an `edu_grading`
  config (configs/edu/grading.py) through `mmjax.train.loop.build_experiment` and
  `loop.create_state`, fed one synthetic batch with the keys, shapes and dtypes the
  preprocessor produces. Compilation is timed separately and excluded.
* The peer: `transformers.ViltForQuestionAnswering`, randomly initialised from a
  `ViltConfig` of the same dims (nothing downloaded), its own VQA loss (binary
  cross-entropy over multi-hot answers; mmjax's classification task uses softmax
  cross-entropy, a negligible difference in cost), then the same clipping and AdamW
  (`torch.optim.AdamW`, fused kernel where available) in eager mode and, with
  `--torch-compile`, under `torch.compile` (its "compile s" is the first step's time).
* With `--host-devices N` (CPU), also mmjax `merged` data-parallel over N XLA host devices
  (`--xla_force_host_platform_device_count`, a mesh `data=N`): the same global batch and
  step, each device running its shard, sharing the cores.
* Throughput: examples/s = batch / median step time over `--steps` timed steps after
  `--warmup` untimed ones; every step is waited for (`jax.block_until_ready`,
  `torch.cuda.synchronize`). "cores" is process CPU time / wall time over the timed steps,
  which shows how many cores each framework really kept busy (XLA's CPU client uses a
  thread pool over every core; torch uses `torch.get_num_threads()` intra-op threads).
* The input pipeline alone: batches/s of `mmjax.data.pipeline.train_iterator` over the
  `edu_grading` training split (in memory, as configs/edu/grading.py sets
  `data.cache`), at the benchmark batch size, with the grading config's own preprocessing
  (8x8 grey digits, 28 tokens) and resized to the benchmark's inputs; its rate divided by
  the mmjax `merged` train-step rate says how far ahead of the model the loader is.

Matching the models: ViLT is a patch embedding (Conv2d) and a BERT text embedding (word +
position + token type, LayerNorm), a modality-type embedding, ONE pre-norm Transformer
over the concatenated sequence, a final LayerNorm, a tanh pooler on token 0 and an MLP
answer classifier. The mmjax model has depth-0 towers (a ViT tower that is only its patch
embedding, [CLS] and position embeddings; a text tower that is only BERT's embeddings and
LayerNorm: `type_vocab_size=2, embed_norm=True, final_norm=False`), the whole depth in
the `merged` fusion (fused [CLS] + per-modality type embeddings + `depth` pre-norm blocks
+ final LayerNorm), ViLT's block wiring (exact GELU, LayerNorm epsilon 1e-12), and a
LayerNorm + Dense head on the fused [CLS]. Differences: mmjax's sequence has one token
more (its fused [CLS]), mmjax's attention has no key bias, and the heads differ (ViLT:
pooler + 2-layer MLP; mmjax: LayerNorm + Dense): the table gives parameter counts with and
without the heads.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRADING_CONFIG = os.path.join(ROOT, "configs", "edu", "grading.py")
DATA_DIR: list[str | None] = [None]  # --data-dir: where edu_grading is built (tfds default)
BERT_VOCAB = 30522

# width, depth, heads, mlp_dim, image_size, patch_size, tokens, batch, vocab_size
# (0: the edu_grading tokenizer's vocabulary).
PRESETS = {
    "small": dict(width=256, depth=4, heads=4, mlp_dim=1024, image_size=64, patch_size=8,
                  tokens=32, batch=32, vocab_size=0),
    # ViT-B/16 at 224px + BERT-base (ViLT-B's transformer, with ViT-B/16 patches).
    "base": dict(width=768, depth=12, heads=12, mlp_dim=3072, image_size=224, patch_size=16,
                 tokens=40, batch=32, vocab_size=BERT_VOCAB),
}


@dataclasses.dataclass(frozen=True)
class Sizes:
  width: int
  depth: int
  heads: int
  mlp_dim: int
  image_size: int
  patch_size: int
  tokens: int
  batch: int
  vocab_size: int
  num_classes: int
  dtype: str


@dataclasses.dataclass
class Row:
  """One line of the table."""

  name: str
  batch: int
  step_s: float            # median seconds per step (per batch for the loader)
  cores: float             # process CPU seconds / wall seconds over the timed steps
  params: int | None = None
  body_params: int | None = None  # without the answer head (ViLT: pooler + classifier)
  compile_s: float | None = None
  ratio: str = ""
  note: str = ""
  times_s: list[float] = dataclasses.field(default_factory=list)

  @property
  def examples_per_s(self) -> float:
    return self.batch / self.step_s


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", choices=sorted(PRESETS), default="small",
                      help="default sizes; the size flags override them (default: small)")
  for name, help_text in (("width", "model width"), ("depth", "Transformer layers"),
                          ("heads", "attention heads"), ("mlp-dim", "MLP hidden size"),
                          ("image-size", "square image side, pixels"),
                          ("patch-size", "patch side, pixels"),
                          ("tokens", "text length, tokens"), ("batch", "examples per step"),
                          ("vocab-size", "text vocabulary; 0: edu_grading's tokenizer")):
    parser.add_argument(f"--{name}", type=int, default=None, help=help_text)
  parser.add_argument("--num-classes", type=int, default=100, help="answer classes")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="compute dtype (parameters stay float32; torch uses autocast)")
  parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
  parser.add_argument("--steps", type=int, default=10, help="timed steps (the median counts)")
  parser.add_argument("--loader-batches", type=int, default=100,
                      help="batches timed per data-loader row")
  parser.add_argument("--torch-compile", action="store_true",
                      help="also time the peer under torch.compile (an extra row)")
  parser.add_argument("--host-devices", type=int, default=1,
                      help="CPU only: > 1 also times mmjax `merged` data-parallel over this many "
                           "XLA host devices (--xla_force_host_platform_device_count; an extra "
                           "row; the other rows stay on one device)")
  parser.add_argument("--skip", nargs="*", default=[],
                      choices=("merged", "co_attention", "vilt", "loader"),
                      help="rows to leave out")
  parser.add_argument("--json", default=None, metavar="PATH", help="also write the figures here")
  parser.add_argument("--data-dir", default=None,
                      help="tfds data dir for edu_grading (default: the tfds default)")
  args = parser.parse_args(argv)
  if args.steps < 1 or args.warmup < 0:
    parser.error("--steps must be >= 1 and --warmup >= 0")
  if args.host_devices < 1 or (args.host_devices > 1 and args.device != "cpu"):
    parser.error("--host-devices must be >= 1, and > 1 only with --device cpu")
  return args


def resolve_sizes(args: argparse.Namespace) -> Sizes:
  preset = dict(PRESETS[args.preset])
  for key in preset:
    value = getattr(args, key)
    if value is not None:
      preset[key] = value
  return Sizes(**preset, num_classes=args.num_classes, dtype=args.dtype)


def set_platform(device: str, host_devices: int = 1) -> None:
  """Picks JAX's backend (and the number of CPU devices) before jax is imported."""
  os.environ.setdefault("JAX_PLATFORMS", "cpu" if device == "cpu" else "cuda")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if host_devices > 1:
    flag = f"--xla_force_host_platform_device_count={host_devices}"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()


def cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def time_steps(step: Callable[[], None], warmup: int, steps: int) -> tuple[list[float], float]:
  """(seconds of each timed step, cores busy on average): `step` runs to completion."""
  for _ in range(warmup):
    step()
  times = []
  wall, cpu = time.perf_counter(), cpu_seconds()
  for _ in range(steps):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return times, (cpu_seconds() - cpu) / (time.perf_counter() - wall)


# --------------------------------------------------------------------------------------
# mmjax


def grading_config(batch: int) -> Any:
  from mmjax.config import config_from_file

  config = config_from_file(GRADING_CONFIG)
  config.data.data_dir = DATA_DIR[0]
  config.input.batch_size = batch
  config.evals.batch_size = batch
  return config


def mmjax_config(sizes: Sizes, fusion: str, devices: int = 1) -> Any:
  """configs/edu/grading.py turned into a ViLT-shaped model (see the module docstring)."""
  config = grading_config(sizes.batch)
  config.data.cache = False  # the model rows read one example (for shapes), not the split
  config.input.image_size = (sizes.image_size, sizes.image_size)
  config.input.image_channels = 3
  config.input.max_text_len = sizes.tokens
  size = dict(width=sizes.width, depth=0, mlp_dim=sizes.mlp_dim, num_heads=sizes.heads)
  config.model.modalities = "image,text"
  config.model.dtype = sizes.dtype
  config.model.param_dtype = "float32"
  config.model.dropout_rate = 0.0
  config.model.block = dict(norm_position="pre", activation="gelu", layer_norm_eps=1e-12)
  config.model.image = dict(variant=f"B/{sizes.patch_size}", **size, final_norm=False)
  config.model.text = dict(variant="B", **size, max_len=sizes.tokens, type_vocab_size=2,
                           embed_norm=True, final_norm=False)
  config.model.fusion = dict(kind=fusion, width=sizes.width, depth=sizes.depth,
                             num_heads=sizes.heads, mlp_dim=sizes.mlp_dim)
  config.model.heads = dict(label=dict(input="fused", pooling="cls"))
  config.losses = dict(label=1.0)
  config.mesh = (("data", devices),)  # data parallel; one device unless --host-devices
  return config


def synthetic_batch(example: dict[str, np.ndarray], sizes: Sizes, vocab_size: int,
                    seed: int = 0) -> dict[str, np.ndarray]:
  """A batch of `sizes.batch` random examples with the keys, shapes and dtypes of the
  preprocessor's `example` (one real example): images in [-1, 1], [CLS] ... [SEP] texts of
  random lengths padded with 0, labels below `sizes.num_classes`."""
  rng = np.random.default_rng(seed)
  batch = {}
  lengths = rng.integers(sizes.tokens // 2, sizes.tokens + 1, size=sizes.batch)
  for key, value in example.items():
    shape = (sizes.batch, *value.shape[1:])
    if key == "image":
      batch[key] = rng.uniform(-1.0, 1.0, shape).astype(value.dtype)
    elif key == "text_mask":
      batch[key] = np.arange(shape[1])[None, :] < lengths[:, None]
    elif key == "text_ids":
      ids = rng.integers(5, vocab_size, shape)  # ids 0..4 are the special tokens
      ids[:, 0] = 2  # [CLS]
      ids[np.arange(sizes.batch), lengths - 1] = 3  # [SEP]
      batch[key] = np.where(np.arange(shape[1])[None, :] < lengths[:, None], ids, 0
                            ).astype(value.dtype)
    elif key == "example_mask":
      batch[key] = np.ones(shape, value.dtype)
    else:  # a class label
      batch[key] = rng.integers(0, sizes.num_classes, shape).astype(value.dtype)
  return batch


def mmjax_experiment(sizes: Sizes, fusion: str, devices: int = 1) -> tuple[Any, int]:
  """(the Experiment of `mmjax_config` on the first `devices` devices, vocabulary size),
  with a `num_classes`-way head."""
  import jax

  from mmjax.models.heads import HeadSpec
  from mmjax.models.model import build_model
  from mmjax.train import loop

  config = mmjax_config(sizes, fusion, devices)
  exp = loop.build_experiment(config, devices=jax.devices()[:devices])
  # edu_grading's label has 2 classes; the benchmark's answer head has `num_classes`, so
  # the model is rebuilt from the same config with that head (and vocabulary).
  vocab_size = sizes.vocab_size or exp.preprocessor.text_encoder.vocab_size
  model = build_model(config.model, modalities=("image", "text"), vocab_size=vocab_size,
                      heads=(HeadSpec("label", "fused", sizes.num_classes, "cls"),))
  task = dataclasses.replace(exp.task, num_classes={"label": sizes.num_classes})
  return dataclasses.replace(exp, model=model, task=task), vocab_size


def bench_mmjax(sizes: Sizes, fusion: str, args: argparse.Namespace,
                batch: dict[str, np.ndarray] | None = None, devices: int = 1
                ) -> tuple[Row, dict]:
  """The mmjax row of `fusion` on a mesh of `devices` devices, and the synthetic batch it
  trained on."""
  import jax

  from mmjax.train import loop
  from mmjax.train import step as step_lib

  exp, vocab_size = mmjax_experiment(sizes, fusion, devices)
  if batch is None:
    batch = synthetic_batch(exp.example_batch(), sizes, vocab_size)
  state, setup = loop.create_state(exp)
  body = sum(x.size for path, x in jax.tree_util.tree_leaves_with_path(state.params)
             if getattr(path[0], "key", None) != "heads")
  train_step = step_lib.make_train_step(
      exp.model, exp.task, setup.tx, setup.schedule,
      jax.random.fold_in(jax.random.key(exp.config.seed), 1), trainable=setup.trainable,
      model_params=setup.model_params, accum_steps=loop.accum_steps(exp.config))
  step_fn = step_lib.jit_train_step(train_step, setup.shardings, exp.batch_sharding,
                                    exp.replicated)
  device_batch = exp.to_device(batch)
  start = time.perf_counter()
  compiled = step_fn.lower(state, device_batch).compile()
  compile_s = time.perf_counter() - start

  holder = {"state": state}

  def run() -> None:
    holder["state"], metrics = compiled(holder["state"], device_batch)
    jax.block_until_ready((holder["state"], metrics))
    holder["metrics"] = metrics

  times, cores = time_steps(run, args.warmup, args.steps)
  loss = float(holder["metrics"]["loss"])
  if not np.isfinite(loss):
    raise RuntimeError(f"mmjax {fusion}: the loss is {loss}")
  name = f"mmjax `{fusion}`" + (f", {devices} host devices" if devices > 1 else "")
  row = Row(name, sizes.batch, statistics.median(times), cores, setup.num_total, body,
            compile_s, note="data parallel" if devices > 1 else "", times_s=times)
  return row, batch


# --------------------------------------------------------------------------------------
# Hugging Face ViLT (PyTorch)


def vilt_model(sizes: Sizes, vocab_size: int) -> Any:
  from transformers import ViltConfig, ViltForQuestionAnswering

  config = ViltConfig(
      vocab_size=vocab_size, type_vocab_size=2, modality_type_vocab_size=2,
      max_position_embeddings=sizes.tokens, hidden_size=sizes.width,
      num_hidden_layers=sizes.depth, num_attention_heads=sizes.heads,
      intermediate_size=sizes.mlp_dim, hidden_act="gelu", hidden_dropout_prob=0.0,
      attention_probs_dropout_prob=0.0, layer_norm_eps=1e-12, image_size=sizes.image_size,
      patch_size=sizes.patch_size, num_channels=3, qkv_bias=True, max_image_length=-1,
      num_labels=sizes.num_classes)
  return ViltForQuestionAnswering(config)


def torch_optimizer(model: Any) -> tuple[Any, str]:
  """AdamW as mmjax's config sets it (lr 1e-3, b1 0.9, b2 0.999, eps 1e-8, weight decay
  1e-4 on Linear and Conv weights only); the fused kernel where this torch has it."""
  import torch

  decay = {id(m.weight) for m in model.modules()
           if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
  params = list(model.parameters())
  groups = [dict(params=[p for p in params if id(p) in decay], weight_decay=1e-4),
            dict(params=[p for p in params if id(p) not in decay], weight_decay=0.0)]
  kwargs = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
  try:
    return torch.optim.AdamW(groups, fused=True, **kwargs), "fused"
  except (RuntimeError, TypeError, ValueError):
    return torch.optim.AdamW(groups, foreach=True, **kwargs), "foreach"


def bench_vilt(sizes: Sizes, vocab_size: int, batch: dict[str, np.ndarray],
               args: argparse.Namespace, compiled: bool) -> Row:
  import torch

  device = torch.device("cuda" if args.device == "gpu" else "cpu")
  torch.manual_seed(0)
  model = vilt_model(sizes, vocab_size).to(device).train()
  params = sum(p.numel() for p in model.parameters())
  head = sum(p.numel() for name, p in model.named_parameters()
             if name.startswith(("classifier.", "vilt.pooler.")))
  optimizer, kind = torch_optimizer(model)
  forward = torch.compile(model) if compiled else model
  inputs = dict(
      input_ids=torch.as_tensor(batch["text_ids"], dtype=torch.long),
      attention_mask=torch.as_tensor(batch["text_mask"], dtype=torch.long),
      token_type_ids=torch.zeros(batch["text_ids"].shape, dtype=torch.long),
      pixel_values=torch.as_tensor(batch["image"]).permute(0, 3, 1, 2).contiguous(),
      pixel_mask=torch.ones((sizes.batch, sizes.image_size, sizes.image_size),
                            dtype=torch.long),
      labels=torch.nn.functional.one_hot(torch.as_tensor(batch["label"], dtype=torch.long),
                                         sizes.num_classes).float())
  inputs = {key: value.to(device) for key, value in inputs.items()}
  autocast = dict(device_type=device.type, dtype=torch.bfloat16,
                  enabled=sizes.dtype == "bfloat16")
  losses = []

  def run() -> None:
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(**autocast):
      loss = forward(**inputs).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    if device.type == "cuda":
      torch.cuda.synchronize()
    losses.append(loss.detach())

  start = time.perf_counter()
  run()  # the first step: torch.compile compiles here
  first_s = time.perf_counter() - start
  times, cores = time_steps(run, args.warmup, args.steps)
  loss = float(losses[-1])
  if not np.isfinite(loss):
    raise RuntimeError(f"ViLT: the loss is {loss}")
  name = "HF ViLT, torch.compile" if compiled else "HF ViLT, eager"
  row = Row(name, sizes.batch, statistics.median(times), cores, params, params - head,
            first_s if compiled else None, note=f"AdamW {kind}", times_s=times)
  return row


# --------------------------------------------------------------------------------------
# Input pipeline


def bench_loader(sizes: Sizes, args: argparse.Namespace) -> list[Row]:
  """Batches/s of `pipeline.train_iterator` over edu_grading's cached training split, with
  the grading config's preprocessing and with the benchmark's input sizes."""
  import jax

  from mmjax.data import pipeline
  from mmjax.train import loop

  grading = grading_config(sizes.batch)
  exp = loop.build_experiment(grading, devices=jax.devices()[:1])
  start = time.perf_counter()
  source = exp.dataset.source(grading.data.train_split)  # reads the split into memory
  cache_s = time.perf_counter() - start
  resized = loop.build_experiment(mmjax_config(sizes, "merged"), devices=jax.devices()[:1])
  rows = []
  for label, preprocessor in (("grading config's inputs", exp.preprocessor),
                              ("benchmark's inputs", resized.preprocessor)):
    example = preprocessor.collate([preprocessor.example(source[0])])
    shape = "x".join(str(n) for n in example["image"].shape[1:])
    iterator = pipeline.train_iterator(source, preprocessor, global_batch_size=sizes.batch,
                                       seed=grading.seed, num_threads=grading.input.num_threads)
    for _ in range(max(10, args.warmup)):
      next(iterator)
    wall, cpu = time.perf_counter(), cpu_seconds()
    times = []
    for _ in range(args.loader_batches):
      start = time.perf_counter()
      next(iterator)
      times.append(time.perf_counter() - start)
    elapsed = time.perf_counter() - wall
    cores = (cpu_seconds() - cpu) / elapsed
    # The rate over the whole window: with prefetching, single waits are not the rate.
    rows.append(Row(f"data loader, edu_grading, {label} ({shape} images, "
                    f"{example['text_ids'].shape[1]} tokens)", sizes.batch,
                    elapsed / args.loader_batches, cores,
                    note=f"{args.loader_batches} batches; num_threads="
                         f"{grading.input.num_threads}; split read into memory in "
                         f"{cache_s:.1f} s", times_s=times))
    del iterator
  return rows


# --------------------------------------------------------------------------------------
# Report


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def environment(args: argparse.Namespace) -> dict[str, Any]:
  import flax
  import jax
  import transformers

  info: dict[str, Any] = dict(
      date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
      python=platform.python_version(), jax=jax.__version__, flax=flax.__version__,
      transformers=transformers.__version__, jax_device=str(jax.devices()[0].device_kind),
      jax_devices=jax.device_count(), cpu=cpu_model(), cpu_cores=os.cpu_count(),
      cpu_cores_usable=len(os.sched_getaffinity(0)),
      xla_flags=os.environ.get("XLA_FLAGS", ""))
  try:
    import torch

    info.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                torch_interop_threads=torch.get_num_interop_threads())
    if args.device == "gpu" and torch.cuda.is_available():
      info["torch_device"] = torch.cuda.get_device_name()
  except ImportError:
    info["torch"] = "not installed"
  return info


def format_table(sizes: Sizes, info: dict[str, Any], rows: list[Row],
                 args: argparse.Namespace) -> str:
  patches = (sizes.image_size // sizes.patch_size) ** 2
  device = (info.get("torch_device", info["jax_device"]) if args.device == "gpu"
            else f"{info['cpu']} ({info['cpu_cores']} cores)")
  lines = [
      f"## Train-step throughput: mmjax vs HF ViLT ({args.device}, {sizes.dtype})",
      "",
      f"- device: {device}; JAX device kind: {info['jax_device']}",
      f"- versions: jax {info['jax']}, flax {info['flax']}, torch {info.get('torch')}, "
      f"transformers {info['transformers']}, Python {info['python']}",
      f"- date: {info['date']}",
      f"- threads: torch.get_num_threads() = {info.get('torch_threads')} (interop "
      f"{info.get('torch_interop_threads')}); "
      + (f"XLA:CPU runs on all {info['cpu_cores_usable']} usable cores; " if args.device == "cpu"
         else "")
      + f"XLA_FLAGS={info['xla_flags'] or '(unset)'}",
      f"- size: width {sizes.width}, depth {sizes.depth}, heads {sizes.heads}, MLP "
      f"{sizes.mlp_dim}, images {sizes.image_size}x{sizes.image_size}x3 / patch "
      f"{sizes.patch_size} ({patches} patches), {sizes.tokens} tokens (sequence: ViLT "
      f"{sizes.tokens + 1 + patches}, mmjax {sizes.tokens + 2 + patches} with its fused "
      f"[CLS]), vocabulary {info['vocab_size']}, {sizes.num_classes} answer classes, batch "
      f"{sizes.batch}",
      f"- timing: median of {args.steps} steps after {args.warmup} warm-up steps "
      "(compilation excluded, shown separately); a step is forward + backward + clipping + "
      "AdamW; \"cores\" = process CPU time / wall time",
      "",
      "| row | examples/s | ms/step | cores | parameters (with head / without) | ratio | "
      "compile s | notes |",
      "|---|---|---|---|---|---|---|---|",
  ]
  for row in rows:
    params = ("—" if row.params is None
              else f"{row.params / 1e6:.3f} M / {row.body_params / 1e6:.3f} M")
    compile_s = "—" if row.compile_s is None else f"{row.compile_s:.1f}"
    lines.append(f"| {row.name} | {row.examples_per_s:,.1f} | {row.step_s * 1e3:.1f} | "
                 f"{row.cores:.2f} | {params} | {row.ratio or '—'} | {compile_s} | "
                 f"{row.note} |")
  lines += [
      "",
      "Heads: ViLT's answer head is its tanh pooler + Linear(w, 2w) + LayerNorm + GELU + "
      "Linear(2w, classes), trained with binary cross-entropy on multi-hot targets; "
      "mmjax's is LayerNorm + Dense(classes) on the fused [CLS], trained with softmax "
      "cross-entropy. Loader rows: ms per batch and their rate over the mmjax `merged` "
      "train-step rate.",
  ]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  DATA_DIR[0] = args.data_dir
  set_platform(args.device, args.host_devices)
  sizes = resolve_sizes(args)
  if sizes.image_size % sizes.patch_size:
    raise SystemExit(f"--image-size {sizes.image_size} is not divisible by --patch-size "
                     f"{sizes.patch_size}")
  if sizes.width % sizes.heads:
    raise SystemExit(f"--width {sizes.width} is not divisible by --heads {sizes.heads}")

  rows: list[Row] = []
  batch = None
  vocab_size = sizes.vocab_size
  for fusion in ("merged", "co_attention"):
    if fusion in args.skip:
      continue
    print(f"timing mmjax {fusion} ...", file=sys.stderr, flush=True)
    row, batch = bench_mmjax(sizes, fusion, args, batch)
    rows.append(row)
    gc.collect()  # the previous model's buffers go before the next one is timed
  if args.host_devices > 1 and "merged" not in args.skip:
    if sizes.batch % args.host_devices:
      raise SystemExit(f"--batch {sizes.batch} is not divisible by --host-devices "
                       f"{args.host_devices}")
    print(f"timing mmjax merged on {args.host_devices} host devices ...", file=sys.stderr,
          flush=True)
    rows.append(bench_mmjax(sizes, "merged", args, batch, devices=args.host_devices)[0])
  if batch is None or not vocab_size:
    exp, vocab_size = mmjax_experiment(sizes, "merged")
    if batch is None:
      batch = synthetic_batch(exp.example_batch(), sizes, vocab_size)
  peers = []
  if "vilt" not in args.skip:
    for compiled in (False, True) if args.torch_compile else (False,):
      print(f"timing HF ViLT{' (torch.compile)' if compiled else ''} ...", file=sys.stderr,
            flush=True)
      peers.append(bench_vilt(sizes, vocab_size, batch, args, compiled))
      gc.collect()
  eager = peers[0] if peers else None
  for row in rows + peers[1:]:
    if eager is not None:
      row.ratio = f"{eager.step_s / row.step_s:.2f}x HF eager"
  if eager is not None:
    eager.ratio = "1.00x"
  rows += peers
  if "loader" not in args.skip:
    print("timing the data loader ...", file=sys.stderr, flush=True)
    loader = bench_loader(sizes, args)
    merged = next((r for r in rows if r.name == "mmjax `merged`"), None)
    for row in loader:
      if merged is not None:
        row.ratio = f"{merged.step_s / row.step_s:.1f}x mmjax `merged` steps"
    rows += loader

  info = dict(environment(args), vocab_size=vocab_size)
  print(format_table(sizes, info, rows, args))
  if args.json:
    figures = dict(environment=info, sizes=dataclasses.asdict(sizes),
                   warmup=args.warmup, steps=args.steps,
                   rows=[dict(dataclasses.asdict(r), examples_per_s=r.examples_per_s)
                         for r in rows])
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(figures, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
