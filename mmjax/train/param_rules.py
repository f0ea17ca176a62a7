"""Regex rules over parameter paths: one mechanism for every per-parameter decision.

A parameter's path is its keys joined by "/", e.g.
`text_encoder/encoder/block_0/self_attention/query/kernel`. A rule list is a sequence
of (regex, value) pairs; a parameter takes the value of the first regex that matches
its whole path (`re.fullmatch`). Weight decay uses it now; freezing, LoRA, learning-rate
multipliers and sharding reuse the same function.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax


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


def match_rules(tree: Any, rules: Sequence[tuple[str, Any]], default: Any) -> Any:
  """A tree of the same structure: each leaf is the value of its first matching rule."""
  compiled = [(re.compile(pattern), value) for pattern, value in rules]

  def value_for(path: str) -> Any:
    for pattern, value in compiled:
      if pattern.fullmatch(path):
        return value
    return default

  return jax.tree.map(value_for, param_paths(tree))


def weight_decay_mask(params: Any, patterns: Sequence[str]) -> Any:
  """True for parameters whose path matches one of `patterns` (decayed), else False."""
  return match_rules(params, [(p, True) for p in patterns], default=False)
