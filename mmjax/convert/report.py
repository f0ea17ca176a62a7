"""What a checkpoint import did: which parameters were loaded, new or ignored."""

from __future__ import annotations

import collections
import dataclasses


@dataclasses.dataclass
class ConversionReport:
  """The outcome of `load_pretrained`.

  Attributes:
    checkpoint: where the weights came from.
    kind: the converter used ("bert", "vit", "clip_text", "clip_vision").
    prefix: the subtree of the mmjax parameters that was filled ("" = the whole tree).
    loaded: mmjax parameter paths ("encoder/block_0/mlp/fc1/kernel") set from the checkpoint.
    new: mmjax parameter paths the checkpoint has no value for (they keep their init).
    ignored: checkpoint names ("encoder.layer.0.attention.self.key.bias") left unused.
    reasons: why each ignored checkpoint name was left unused.
    notes: adjustments made while loading (e.g. position embeddings truncated).
    num_values: how many scalars were loaded.
  """

  checkpoint: str
  kind: str
  prefix: str = ""
  loaded: list[str] = dataclasses.field(default_factory=list)
  new: list[str] = dataclasses.field(default_factory=list)
  ignored: list[str] = dataclasses.field(default_factory=list)
  reasons: dict[str, str] = dataclasses.field(default_factory=dict)
  notes: list[str] = dataclasses.field(default_factory=list)
  num_values: int = 0

  def ignore(self, name: str, reason: str) -> None:
    self.ignored.append(name)
    self.reasons[name] = reason

  def __str__(self) -> str:
    where = f"'{self.prefix}'" if self.prefix else "the parameter tree"
    subtrees = collections.Counter(name.split("/")[0] for name in self.loaded)
    parts = [f"Loaded {len(self.loaded)} parameters ({self.num_values:,} values) of "
             f"{self.checkpoint} ({self.kind}) into {where} ("
             + ", ".join(f"{tree} {count}" for tree, count in subtrees.items()) + ")"]
    if self.new:
      parts.append(f"{len(self.new)} new, not in the checkpoint, keep their initial values: "
                   f"{_short(self.new)}")
    else:
      parts.append("none new")
    by_reason = collections.defaultdict(list)
    for name in self.ignored:
      by_reason[self.reasons.get(name, "unused")].append(name)
    if by_reason:
      parts.append(f"{len(self.ignored)} ignored: " + "; ".join(
          f"{reason} [{len(names)}: {_short(names)}]" for reason, names in by_reason.items()))
    else:
      parts.append("none ignored")
    parts.extend(self.notes)
    return "; ".join(parts) + "."


def _short(names: list[str], limit: int = 4) -> str:
  shown = ", ".join(names[:limit])
  return shown + (f", ... {len(names) - limit} more" if len(names) > limit else "")
