"""The training state: everything a checkpoint must hold besides the data position."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import optax


@flax.struct.dataclass
class TrainState:
  """step: int32 scalar; params: every parameter, trainable and frozen (in lora mode
  also the `lora_a` / `lora_b` factors beside their kernels); opt_state: optax state of
  the trainable parameters only (`param_rules.split_params`), none for frozen ones.

  Randomness is not stored: each step derives its key from the config seed and `step`.
  """

  step: jax.Array
  params: Any
  opt_state: optax.OptState
