"""What the generated question-answering builders (shapes_relational, video_motion) share.

Each draws its splits from a fixed seed with its own `make_split` (scenes or clips, one
question each), in `SPLIT_SIZES` order so that a later split excludes every item an
earlier one drew, numbers the items across splits, and trains a WordPiece vocabulary on
the training questions.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from mmjax.data.tokenizer import TOKENIZER_FILE, build_wordpiece


class GeneratedQA:
  """Mixin for a tfds GeneratorBasedBuilder (put it first among the bases).

  Class attributes:
    SEED: split i is drawn from SEED + i + 1.
    SPLIT_SIZES: {split: number of items}, in drawing order.
    VOCAB_SIZE: the WordPiece vocabulary's size.
    FEATURES: the example columns written, in order.
    make_split: staticmethod (num_items, seed, *, first_id, exclude) -> {column: values};
      adds the keys of the items it drew to `exclude`.
  """

  SEED: int
  SPLIT_SIZES: Mapping[str, int]
  VOCAB_SIZE: int
  FEATURES: tuple[str, ...]
  make_split: Callable[..., dict]

  @classmethod
  def make_splits(cls) -> dict[str, dict]:
    """{split: example columns}, later splits excluding every earlier split's items."""
    seen: set[tuple[int, ...]] = set()
    splits, first_id = {}, 0
    for i, (name, size) in enumerate(cls.SPLIT_SIZES.items()):
      splits[name] = cls.make_split(size, cls.SEED + i + 1, first_id=first_id, exclude=seen)
      first_id += size
    return splits

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing is downloaded.
    splits = self.make_splits()
    # self.data_dir is tfds's temporary directory here, renamed into place only when
    # the whole dataset is written, so the vocabulary appears atomically with it.
    build_wordpiece(splits["train"]["question"], self.VOCAB_SIZE,
                    os.path.join(self.data_dir, TOKENIZER_FILE))
    return {name: self._generate_examples(columns) for name, columns in splits.items()}

  def _generate_examples(self, columns):
    for i in range(len(columns["question"])):
      yield i, {name: columns[name][i] for name in self.FEATURES}  # the key fixes the order
