"""Regex rules over parameter paths: one mechanism for every per-parameter decision.

A parameter's path is its keys joined by "/", e.g.
`text_encoder/encoder/block_0/self_attention/query/kernel`. A rule list is a sequence
of (regex, value) pairs; a parameter takes the value of the first regex that matches
its whole path (`re.fullmatch`). The same function decides:

- what trains: `config.finetune.mode` expands into rules labelling each parameter
  "train", "freeze" or "lora" (frozen, plus a trainable low-rank update); the user's
  `config.finetune.rules` come first and so take precedence;
- learning-rate multipliers (`config.optimizer.lr_mults`; a multiplier of 0 freezes);
- the weight-decay mask (`config.optimizer.weight_decay_rules`);
- and, later, shardings (a rule list whose values are PartitionSpecs).

The fine-tuning modes (the towers are the top-level `<name>_encoder` modules; the
fusion module and the heads are not towers):

| mode            | frozen                        | trained                                |
| full            | nothing                       | everything                             |
| frozen_image    | image_encoder/...             | the rest                               |
| frozen_text     | text_encoder/...              | the rest                               |
| frozen_towers   | every tower                   | fusion, heads                          |
| lora            | every tower, incl. LoRA bases | LoRA factors, fusion, heads            |
| adapters        | every tower except below      | adapters, towers' LayerNorms, fusion, heads |

Adapters mode trains the towers' LayerNorm scales and biases along with the adapters
(as Houlsby et al. 2019 do: a few thousand parameters that let each block re-centre
its features); add `(".*_encoder/.*norm.*", "freeze")` to `config.finetune.rules` to
freeze them too. LoRA mode trains only the low-rank factors inside the towers.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
from flax import traverse_util

from mmjax.config import ConfigError

log = logging.getLogger(__name__)

TRAIN, FREEZE, LORA = "train", "freeze", "lora"
FINETUNE_MODES = ("full", "frozen_image", "frozen_text", "frozen_towers", "lora", "adapters")
# A tower is a top-level module named `<modality>_encoder` (image, text, audio, ...).
TOWERS = r"[^/]+_encoder"
# LoRA by default on the query and value projections of every tower's attention.
DEFAULT_LORA_TARGETS = TOWERS + r"/.*/(query|value)/kernel"
LORA_LEAVES = r".*/lora_[ab]"  # the factors lora.add_lora puts beside a kernel
ADAPTER_LEAVES = r".*/adapter_[^/]+/.*"  # layers.Adapter modules, all their parameters
TOWER_NORMS = TOWERS + r"/(.*/)?[^/]*norm[^/]*/(scale|bias)"  # LayerNorms inside the towers


def path_to_str(path: tuple) -> str:
  """A jax tree path -> "a/b/c"."""
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def param_paths(tree: Any) -> Any:
  """A tree of the same structure whose leaves are the leaves' path strings."""
  return jax.tree_util.tree_map_with_path(lambda path, _: path_to_str(path), tree)


def compile_rules(rules: Sequence[tuple[str, Any]], field: str = "rules"
                  ) -> list[tuple[re.Pattern, Any]]:
  """(regex, value) pairs -> (compiled regex, value); a bad regex is a ConfigError naming
  `field` (the config field the rules came from)."""
  compiled = []
  for rule in rules:
    if isinstance(rule, str) or len(rule) != 2:
      raise ConfigError(f"{field}: expected (regex, value) pairs, got {rule!r}")
    pattern, value = rule
    try:
      compiled.append((re.compile(pattern), value))
    except (re.error, TypeError) as e:
      raise ConfigError(f"{field}: bad regex {pattern!r} ({e})") from None
  return compiled


def match_rules(tree: Any, rules: Sequence[tuple[str, Any]], default: Any,
                field: str = "rules") -> Any:
  """A tree of the same structure: each leaf is the value of its first matching rule.

  `tree` may hold arrays or jax.ShapeDtypeStructs; only the paths are read.
  """
  compiled = compile_rules(rules, field)

  def value_for(path: str) -> Any:
    for pattern, value in compiled:
      if pattern.fullmatch(path):
        return value
    return default

  return jax.tree.map(value_for, param_paths(tree))


def unmatched_rules(tree: Any, rules: Sequence[tuple[str, Any]]) -> list[str]:
  """The regexes of `rules` that match no path of `tree` (typos, absent towers)."""
  paths = jax.tree.leaves(param_paths(tree))
  return [pattern for pattern, _ in rules
          if not any(re.fullmatch(pattern, path) for path in paths)]


def weight_decay_mask(params: Any, patterns: Sequence[str]) -> Any:
  """True for parameters whose path matches one of `patterns` (decayed), else False."""
  return match_rules(params, [(p, True) for p in patterns], default=False,
                     field="config.optimizer.weight_decay_rules")


def lr_multipliers(params: Any, lr_mults: Sequence[tuple[str, float]]) -> Any:
  """A tree of python floats: the multiplier of the first matching rule, else 1.0."""
  field = "config.optimizer.lr_mults"
  for pattern, mult in lr_mults:
    if not isinstance(mult, (int, float)) or isinstance(mult, bool) or mult < 0:
      raise ConfigError(f"{field}: the multiplier for {pattern!r} must be a number >= 0, "
                        f"got {mult!r}")
  return match_rules(params, [(p, float(m)) for p, m in lr_mults], default=1.0, field=field)


@dataclasses.dataclass(frozen=True)
class Finetune:
  """`config.finetune`, validated: which parameters train, and how.

  Attributes:
    mode: one of FINETUNE_MODES.
    rules: the user's (regex, "train" | "freeze") rules; they precede the mode's own.
    lora_rank: r, the inner dimension of the LoRA factors [in, r] @ [r, out].
    lora_alpha: the LoRA update is scaled by alpha / r.
    lora_targets: regexes selecting the 2-D kernels that get LoRA factors.
    adapter_dim: bottleneck width of the adapters (adapters mode).
  """

  mode: str = "full"
  rules: tuple[tuple[str, str], ...] = ()
  lora_rank: int = 8
  lora_alpha: float = 16.0
  lora_targets: tuple[str, ...] = (DEFAULT_LORA_TARGETS,)
  adapter_dim: int = 16

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> Finetune:
    """Reads `config.finetune` (absent: full fine-tuning) and checks every field."""
    ft = config.get("finetune", None)
    if ft is None:
      return cls()
    ft = ft.to_dict() if isinstance(ft, ml_collections.ConfigDict) else dict(ft)
    known = {"mode", "rules", "lora", "adapters"}
    if set(ft) - known:
      raise ConfigError(f"config.finetune: unknown field(s) {', '.join(sorted(set(ft) - known))}"
                        f"; expected some of {', '.join(sorted(known))}")
    mode = ft.get("mode", "full")
    if mode not in FINETUNE_MODES:
      raise ConfigError(f"config.finetune.mode: unknown mode '{mode}'; expected one of "
                        f"{', '.join(FINETUNE_MODES)}")
    rules = tuple(tuple(rule) for rule in (ft.get("rules") or ()))
    for _, value in compile_rules(rules, "config.finetune.rules"):
      if value not in (TRAIN, FREEZE):
        raise ConfigError(f"config.finetune.rules: value {value!r} must be "
                          f"'{TRAIN}' or '{FREEZE}'")
    lora = dict(ft.get("lora") or {})
    rank, alpha = lora.get("rank", cls.lora_rank), lora.get("alpha", cls.lora_alpha)
    if not isinstance(rank, int) or rank <= 0:
      raise ConfigError(f"config.finetune.lora.rank must be a positive integer, got {rank!r}")
    if not isinstance(alpha, (int, float)) or alpha <= 0:
      raise ConfigError(f"config.finetune.lora.alpha must be a positive number, got {alpha!r}")
    targets = lora.get("targets", cls.lora_targets)
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    if not targets:
      raise ConfigError("config.finetune.lora.targets is empty; expected a regex over "
                        "parameter paths")
    compile_rules([(t, LORA) for t in targets], "config.finetune.lora.targets")
    dim = dict(ft.get("adapters") or {}).get("dim", cls.adapter_dim)
    if not isinstance(dim, int) or dim <= 0:
      raise ConfigError(f"config.finetune.adapters.dim must be a positive integer, got {dim!r}")
    return cls(mode, rules, rank, float(alpha), targets, dim)

  @property
  def model_adapter_dim(self) -> int:
    """`build_model(adapter_dim=...)`: the adapter width in adapters mode, else 0."""
    return self.adapter_dim if self.mode == "adapters" else 0

  def mode_rules(self) -> tuple[tuple[str, str], ...]:
    """The rules `mode` expands into (without the user's rules)."""
    freeze_towers = (TOWERS + "/.*", FREEZE)
    rules = {
        "full": [],
        "frozen_image": [("image_encoder/.*", FREEZE)],
        "frozen_text": [("text_encoder/.*", FREEZE)],
        "frozen_towers": [freeze_towers],
        "lora": [(LORA_LEAVES, TRAIN), *((t, LORA) for t in self.lora_targets),
                 freeze_towers],
        "adapters": [(ADAPTER_LEAVES, TRAIN), (TOWER_NORMS, TRAIN), freeze_towers],
    }[self.mode]
    return (*rules, (".*", TRAIN))

  def rule_list(self) -> tuple[tuple[str, str], ...]:
    """The user's rules, then the mode's: first match wins."""
    return (*self.rules, *self.mode_rules())

  def labels(self, params: Any) -> Any:
    """A tree like `params` of TRAIN / FREEZE / LORA."""
    return match_rules(params, self.rule_list(), default=TRAIN, field="config.finetune.rules")

  def warn_unmatched(self, params: Any) -> None:
    for pattern in unmatched_rules(params, self.rules):
      log.warning("config.finetune.rules: %r matches no parameter", pattern)


def trainable_mask(labels: Any, lr_mults: Any) -> Any:
  """True where a parameter trains: labelled TRAIN and a learning-rate multiplier > 0.

  Args:
    labels: a tree of TRAIN / FREEZE / LORA (`Finetune.labels`).
    lr_mults: a tree of the same structure of floats (`lr_multipliers`).
  """
  return jax.tree.map(lambda label, mult: label == TRAIN and mult > 0, labels, lr_mults)


def split_params(params: Any, mask: Any) -> tuple[dict, dict]:
  """Nested dict `params` -> (trainable, frozen): two nested dicts holding the leaves
  where `mask` (same structure, python bools) is True / False. Subtrees left empty are
  dropped, so an optimizer initialised on `trainable` holds no state for frozen leaves."""
  flat = traverse_util.flatten_dict(params)
  flat_mask = traverse_util.flatten_dict(mask)
  trainable = {k: v for k, v in flat.items() if flat_mask[k]}
  frozen = {k: v for k, v in flat.items() if not flat_mask[k]}
  return traverse_util.unflatten_dict(trainable), traverse_util.unflatten_dict(frozen)


def merge_params(trainable: dict, frozen: dict) -> dict:
  """The inverse of `split_params`: one nested dict with the leaves of both."""
  return traverse_util.unflatten_dict({**traverse_util.flatten_dict(trainable),
                                       **traverse_util.flatten_dict(frozen)})
