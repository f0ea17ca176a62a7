"""WordPiece vocabularies: built from a corpus, loaded through `transformers`.

A dataset builder builds a small vocabulary from its own text and saves it as
`tokenizer.json` next to the dataset; `load_tokenizer` reads it back as a
`transformers.PreTrainedTokenizerFast` built from the `tokenizers` object
(`BertTokenizerFast(vocab_file=...)` would silently ignore the file in transformers 5).
"""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Iterable, Sequence

import numpy as np

# transformers logs an advisory that PyTorch is absent; mmjax never needs PyTorch.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from tokenizers import (  # noqa: E402
  Tokenizer,
  decoders,
  models,
  normalizers,
  pre_tokenizers,
  processors,
)
from transformers import PreTrainedTokenizerFast  # noqa: E402

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4, in this order
PAD_ID = 0
# The vocabulary file of a dataset (in its tfds data_dir) and of a run (in its workdir).
TOKENIZER_FILE = "tokenizer.json"

log = logging.getLogger(__name__)


def build_wordpiece(texts: Iterable[str], vocab_size: int, path: str) -> None:
  """Builds a lower-cased BERT-style WordPiece vocabulary from `texts`, deterministically,
  and saves it to `path`.

  The vocabulary is the special tokens (ids 0..4), every character seen (alone and as a
  `##` continuation, so no text of those characters becomes [UNK]), then whole words by
  descending count (ties in alphabetical order) up to `vocab_size`. Generated corpora
  have closed vocabularies, so every word of theirs is one token when `vocab_size` allows.
  (The `tokenizers` trainer breaks ties in hash order, which differs between processes;
  a dataset built twice would get two vocabularies.)

  Encoding adds [CLS] at the start and [SEP] at the end of every text.
  """
  normalizer = normalizers.BertNormalizer(lowercase=True)
  pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  counts = collections.Counter(
      word for text in texts
      for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
  chars = sorted({char for word in counts for char in word})
  vocab = list(SPECIAL_TOKENS) + chars + [f"##{char}" for char in chars]
  if len(vocab) > vocab_size:
    raise ValueError(f"vocab_size={vocab_size} cannot hold the {len(vocab)} special tokens "
                     "and characters of these texts")
  known = set(vocab)
  words = sorted((w for w in counts if w not in known), key=lambda w: (-counts[w], w))
  vocab += words[:vocab_size - len(vocab)]
  tokenizer = Tokenizer(models.WordPiece({token: i for i, token in enumerate(vocab)},
                                         unk_token="[UNK]", max_input_chars_per_word=100))
  tokenizer.normalizer = normalizer
  tokenizer.pre_tokenizer = pre_tokenizer
  tokenizer.decoder = decoders.WordPiece()
  tokenizer.post_processor = processors.TemplateProcessing(
      single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
      special_tokens=[("[CLS]", SPECIAL_TOKENS.index("[CLS]")),
                      ("[SEP]", SPECIAL_TOKENS.index("[SEP]"))])
  tokenizer.save(path)


def load_tokenizer(path: str, *, standard_ids: bool = True) -> PreTrainedTokenizerFast:
  """A WordPiece `tokenizer.json` (a file, or a directory holding one) as a fast tokenizer.

  With `standard_ids` (mmjax's own vocabularies) the special tokens must have ids 0..4 in
  SPECIAL_TOKENS order; a pretrained checkpoint's tokenizer (e.g. BERT's, [CLS] = 101)
  only needs to contain them.
  """
  if os.path.isdir(path):
    path = os.path.join(path, TOKENIZER_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"tokenizer file not found: {path}")
  tokenizer = PreTrainedTokenizerFast(
      tokenizer_object=Tokenizer.from_file(path), pad_token="[PAD]", unk_token="[UNK]",
      cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
  vocab = tokenizer.get_vocab()
  for token_id, token in enumerate(SPECIAL_TOKENS):
    if token not in vocab:
      raise ValueError(f"{path}: the vocabulary has no special token {token}")
    if standard_ids and vocab[token] != token_id:
      raise ValueError(f"{path}: special token {token} should have id {token_id}")
  return tokenizer


class TextEncoder:
  """Encodes a batch of strings to fixed-length `text_ids` [B, max_len] int32 and
  `text_mask` [B, max_len] bool. Longer texts are cut to max_len (keeping [SEP] at the
  end), with one warning per encoder (one per run: a run's task builds one per text
  field) naming `field`, the setting that holds max_len."""

  def __init__(self, tokenizer: PreTrainedTokenizerFast, max_len: int,
               field: str = "config.input.max_text_len"):
    self.tokenizer = tokenizer
    self.max_len = max_len
    self.field = field
    self._warned = False

  @property
  def vocab_size(self) -> int:
    return len(self.tokenizer)

  def __call__(self, texts: Sequence[str], pairs: Sequence[str] | None = None
               ) -> dict[str, np.ndarray]:
    """`pairs`: a second text for each ("[CLS] text [SEP] pair [SEP]"); a pair too long
    is cut from its longer text first."""
    encoded = self.tokenizer(list(texts), None if pairs is None else list(pairs),
                             padding="max_length", truncation=True,
                             max_length=self.max_len, return_attention_mask=True)
    if not self._warned:
      cut = [i for i, e in enumerate(encoded.encodings) if e.overflowing]
      if cut:
        first = " ".join(str(texts[cut[0]]).split())
        first = first if len(first) <= 60 else first[:57] + "..."
        log.warning("%s=%d: text longer than %d tokens is truncated (warned once; first: "
                    "%r); raise %s to keep it whole", self.field, self.max_len,
                    self.max_len, first, self.field)
        self._warned = True
    return {"text_ids": np.asarray(encoded["input_ids"], np.int32),
            "text_mask": np.asarray(encoded["attention_mask"], bool)}
