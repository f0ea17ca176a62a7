"""Ahead-of-time compilation report (memory, FLOPs) and model FLOPs utilisation (MFU).

The train step is lowered and compiled before step 1, so its cost is known before any
time is spent: XLA's memory analysis (parameters and optimizer state in, temporaries,
outputs) and cost analysis (FLOPs of one step). Both are per device: under a mesh each
device runs its own partitioned program.

MFU = FLOPs per step per device / seconds per step / the device's peak FLOP/s. The
FLOPs are XLA's count of the compiled step, so rematerialised forward passes count
too (strictly that makes it hardware FLOPs utilisation when `remat` is on). XLA counts
the body of a loop once, whatever its trip count, so for a step that loops (gradient
accumulation, scanned layer stacks) the count is reported as unknown rather than
wrong. Peaks are dense bfloat16 matmul throughputs from the vendors' datasheets; set
`config.peak_flops_per_device` for a device not listed (or to compare against another
precision's peak). With no known peak (CPUs), MFU is not logged.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from typing import Any

log = logging.getLogger(__name__)

# Dense bf16 peak FLOP/s per device (datasheets): the first regex that matches the whole
# `device_kind` wins.
PEAK_FLOPS = (
    (r"NVIDIA H100 PCIe", 756e12),
    (r"NVIDIA H100 NVL", 835e12),
    (r"NVIDIA H100( .*)?", 989e12),  # SXM: "NVIDIA H100 80GB HBM3"
    (r"NVIDIA H200( .*)?", 989e12),
    (r"NVIDIA A100([ -].*)?", 312e12),
    (r"NVIDIA L4", 121e12),
    (r"TPU v4", 275e12),
    (r"TPU v5 ?(lite|e)", 197e12),
    (r"TPU v5p?", 459e12),
    (r"TPU v6( ?(lite|e))?", 918e12),
)


def peak_flops(device_kind: str, override: float | None = None) -> float | None:
  """Peak FLOP/s of a device of this `device_kind` (`override` first), None when
  unknown."""
  if override:
    return float(override)
  return next((peak for pattern, peak in PEAK_FLOPS if re.fullmatch(pattern, device_kind)),
              None)


@dataclasses.dataclass
class CompileReport:
  """What XLA says about one compiled step, per device."""

  flops: float | None
  argument_bytes: int
  output_bytes: int
  temp_bytes: int
  alias_bytes: int
  compile_seconds: float

  @property
  def peak_bytes(self) -> int:
    """Arguments + outputs + temporaries, less the donated buffers reused as outputs."""
    return self.argument_bytes + self.output_bytes + self.temp_bytes - self.alias_bytes

  def summary(self) -> str:
    mib = lambda n: f"{n / 2**20:,.1f} MiB"  # noqa: E731
    flops = f"{self.flops / 1e9:,.2f} GFLOP" if self.flops else "FLOPs unknown"
    return (f"compiled train step in {self.compile_seconds:.1f} s: {flops} per step per "
            f"device; memory per device {mib(self.peak_bytes)} (arguments "
            f"{mib(self.argument_bytes)}, temporaries {mib(self.temp_bytes)}, outputs "
            f"{mib(self.output_bytes)}, donated {mib(self.alias_bytes)})")


def compile_ahead(jitted: Any, *args: Any, loops: bool = False) -> tuple[Any, CompileReport]:
  """Lowers and compiles `jitted` for `args` (arrays or ShapeDtypeStructs): the compiled
  executable (call it like `jitted`) and its report. `loops`: the step runs a loop
  (accumulation, scanned layers), whose FLOPs XLA undercounts: reported as unknown."""
  started = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  seconds = time.perf_counter() - started
  costs = compiled.cost_analysis()
  if isinstance(costs, list):  # older jax: one dict per program
    costs = costs[0] if costs else {}
  flops = (costs or {}).get("flops")
  memory = compiled.memory_analysis()
  get = lambda name: int(getattr(memory, name, 0) or 0) if memory is not None else 0  # noqa: E731
  return compiled, CompileReport(
      flops=float(flops) if flops and flops > 0 and not loops else None,
      argument_bytes=get("argument_size_in_bytes"), output_bytes=get("output_size_in_bytes"),
      temp_bytes=get("temp_size_in_bytes"), alias_bytes=get("alias_size_in_bytes"),
      compile_seconds=seconds)


def mfu(report: CompileReport, seconds_per_step: float, peak: float | None) -> float | None:
  """Model FLOPs utilisation of one device, or None without FLOPs or a peak."""
  if not report.flops or not peak or seconds_per_step <= 0:
    return None
  return report.flops / seconds_per_step / peak
