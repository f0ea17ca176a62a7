"""Audio Spectrogram Transformer encoder, sized by name like ViT ("nano/4", "mu/8", "S/16").

Waveforms -> log-mel or MFCC features (`features.py`) -> non-overlapping time x frequency
patches (a Conv with stride = patch) -> [CLS] + learned positional embeddings -> `Encoder`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.config import ConfigError
from mmjax.models.features import FeatureOptions
from mmjax.models.layers import (
  BlockOptions,
  Dtype,
  Encoder,
  Tokens,
  prepend_cls_add_positions,
  resolve_size,
)
from mmjax.models.vit import SIZES  # an AST is a ViT on spectrograms: same named sizes


def parse_variant(variant: str, **overrides) -> dict[str, int]:
  """"S/16" -> dict(width=384, depth=12, mlp_dim=1536, num_heads=6, patch_size=16)."""
  name, sep, patch = variant.partition("/")
  if not sep or not patch.isdigit() or int(patch) == 0:
    raise ConfigError(f"audio variant '{variant}' must look like NAME/PATCH, e.g. 'S/16'")
  size = resolve_size(name, SIZES, overrides)
  size["patch_size"] = int(patch)
  return size


def _ceil_div(a: int, b: int) -> int:
  return -(-a // b)


class AudioEncoder(nn.Module):
  """Waveforms [B, samples] float32 -> Tokens [B, 1 + time_patches * freq_patches, width].

  Features are computed in float32 (see `features.py`), then cut into patch_size x patch_size
  patches: frames along time, mel bands (or MFCCs) along frequency. The waveform is zero-padded
  at its end so the frame count is a multiple of patch_size (the trailing samples a plain
  framing would drop are used), and the feature axis is zero-padded to a multiple of
  patch_size. Token 0 is a learned [CLS] token; patch tokens follow in time-major order
  (all frequency patches of time patch 0, then of time patch 1, ...).

  Without `lengths` the mask is all True. With `lengths` [B] (real samples per waveform),
  samples at or after the length are zeroed before the features, and a patch token is masked
  when its first frame starts at or after the length; [CLS] is always real. Real tokens then
  do not depend on what the waveform holds past its length.

  Like ViT, the positional embedding is sized by the input at `init`: apply to waveforms of
  the same number of samples (pad or crop in the data pipeline and pass `lengths`).
  """

  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  patch_size: int
  sample_rate: int = 16000
  n_fft: int = 400
  hop_length: int = 160
  n_mels: int = 80
  features: str = "log_mel"
  n_mfcc: int = 40
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  options: BlockOptions = BlockOptions()

  def __post_init__(self):
    if self.patch_size <= 0:
      raise ConfigError(f"audio patch_size must be a positive integer, got {self.patch_size}")
    self.feature_options  # noqa: B018  (validates the feature fields early)
    super().__post_init__()

  @property
  def feature_options(self) -> FeatureOptions:
    return FeatureOptions(sample_rate=self.sample_rate, n_fft=self.n_fft,
                          hop_length=self.hop_length, n_mels=self.n_mels,
                          features=self.features, n_mfcc=self.n_mfcc)

  def num_frames(self, samples: int) -> int:
    """Feature frames of a `samples`-long waveform (before padding to whole patches)."""
    return self.feature_options.num_frames(samples)

  def patch_grid(self, samples: int) -> tuple[int, int]:
    """(time patches, frequency patches) for a `samples`-long waveform."""
    return (_ceil_div(self.num_frames(samples), self.patch_size),
            _ceil_div(self.feature_options.num_features, self.patch_size))

  def num_tokens(self, samples: int) -> int:
    """Output tokens, [CLS] included, for a `samples`-long waveform."""
    time_patches, freq_patches = self.patch_grid(samples)
    return 1 + time_patches * freq_patches

  @nn.compact
  def __call__(self, waveforms: jax.Array, lengths: jax.Array | None = None, *,
               train: bool) -> Tokens:
    """waveforms [B, samples] float, lengths optional [B] int -> Tokens (see class doc)."""
    batch, samples = waveforms.shape
    patch, hop = self.patch_size, self.hop_length
    time_patches, freq_patches = self.patch_grid(samples)
    waveforms = waveforms.astype(jnp.float32)
    if lengths is not None:
      waveforms = jnp.where(jnp.arange(samples)[None, :] < lengths[:, None], waveforms, 0.0)
    extra_frames = time_patches * patch - self.num_frames(samples)
    waveforms = jnp.pad(waveforms, ((0, 0), (0, extra_frames * hop)))
    features = self.feature_options(waveforms)  # [B, time_patches * patch, num_features]
    extra_bins = freq_patches * patch - features.shape[-1]
    features = jnp.pad(features, ((0, 0), (0, 0), (0, extra_bins)))
    patches = nn.Conv(
        self.width, (patch, patch), strides=patch, padding="VALID", dtype=self.dtype,
        param_dtype=self.param_dtype, name="patch_embedding")(features[..., None].astype(
            self.dtype))  # [B, time_patches, freq_patches, width]
    tokens = prepend_cls_add_positions(
        self, patches.reshape(batch, time_patches * freq_patches, self.width),
        dtype=self.dtype, param_dtype=self.param_dtype)
    tokens = nn.Dropout(self.dropout_rate)(tokens, deterministic=not train)
    if lengths is None:
      mask = jnp.ones(tokens.shape[:2], dtype=bool)
    else:
      starts = jnp.arange(time_patches) * (patch * hop)  # first sample of each time patch
      real = jnp.repeat(starts[None, :] < lengths[:, None], freq_patches, axis=1)
      mask = jnp.concatenate([jnp.ones((batch, 1), bool), real], axis=1)
    return Encoder(self.depth, self.num_heads, self.mlp_dim, dropout_rate=self.dropout_rate,
                   dtype=self.dtype, param_dtype=self.param_dtype, options=self.options,
                   name="encoder")(Tokens(tokens, mask), train=train)
