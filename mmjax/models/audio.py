"""Audio Spectrogram Transformer encoder, sized by name like ViT ("nano/4", "mu/8", "S/16").

Waveforms -> log-mel or MFCC features (`features.py`) -> non-overlapping time x frequency
patches (a Conv with stride = patch) -> [CLS] + learned positional embeddings -> `Encoder`.
In training, `spec_augment` masks runs of frames and feature bins (SpecAugment) between the
features and the patches: the only place the spectrogram exists (the data pipeline carries
waveforms; its host-side audio op is `gain`, mmjax/data/augment.py).
"""

from __future__ import annotations

from typing import Any

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
  perturbation_point,
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


SPEC_AUGMENT_FIELDS = ("time_masks", "time_width", "freq_masks", "freq_width")


def spec_augment_masks(key: jax.Array, batch: int, frames: int, bins: int, *,
                       time_masks: int = 0, time_width: int = 0, freq_masks: int = 0,
                       freq_width: int = 0) -> tuple[jax.Array, jax.Array]:
  """SpecAugment's masks (Park et al., 2019, without time warping): per example,
  `time_masks` runs of frames and `freq_masks` runs of feature bins, each of a width
  uniform in 0..width (at most the axis) at a uniform start. -> (time [B, frames] bool,
  freq [B, bins] bool), True where masked."""

  def runs(key, count, width, size):
    if not count or not width:
      return jnp.zeros((batch, size), bool)
    width_key, start_key = jax.random.split(key)
    widths = jax.random.randint(width_key, (batch, count), 0, min(width, size) + 1)
    starts = jax.random.randint(start_key, (batch, count), 0, size - widths + 1)
    where = jnp.arange(size)[None, None, :]
    return ((where >= starts[..., None]) & (where < (starts + widths)[..., None])).any(1)

  time_key, freq_key = jax.random.split(key)
  return (runs(time_key, time_masks, time_width, frames),
          runs(freq_key, freq_masks, freq_width, bins))


def mask_features(features: jax.Array, time: jax.Array, freq: jax.Array) -> jax.Array:
  """features [B, T, F] with masked frames (time [B, T']) and bins (freq [B, F]) set to
  each example's mean feature value (SpecAugment's value for normalised features); frames
  past T' (padding) are left alone."""
  time = jnp.pad(time, ((0, 0), (0, features.shape[1] - time.shape[1])))
  masked = time[:, :, None] | freq[:, None, :]
  return jnp.where(masked, features.mean(axis=(1, 2), keepdims=True), features)


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
  # Stochastic depth of the last block (`layers.Encoder`); 0 = none.
  drop_path_rate: float = 0.0
  # SpecAugment in training (`spec_augment_masks`, drawn from the "dropout" rng):
  # dict(time_masks, time_width, freq_masks, freq_width); None (default): off.
  spec_augment: Any = None

  def __post_init__(self):
    if self.patch_size <= 0:
      raise ConfigError(f"audio patch_size must be a positive integer, got {self.patch_size}")
    self.feature_options  # noqa: B018  (validates the feature fields early)
    if self.spec_augment is not None:
      spec = dict(self.spec_augment)
      unknown = sorted(set(spec) - set(SPEC_AUGMENT_FIELDS))
      if unknown or not all(isinstance(v, int) and v >= 0 for v in spec.values()):
        raise ConfigError(f"config.model.audio.spec_augment: expected non-negative integers "
                          f"for some of {', '.join(SPEC_AUGMENT_FIELDS)}, got {spec}")
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
    if train and self.spec_augment:
      time, freq = spec_augment_masks(self.make_rng("dropout"), batch,
                                      self.num_frames(samples), features.shape[-1],
                                      **dict(self.spec_augment))
      features = mask_features(features, time, freq)
    extra_bins = freq_patches * patch - features.shape[-1]
    features = jnp.pad(features, ((0, 0), (0, 0), (0, extra_bins)))
    patches = nn.Conv(
        self.width, (patch, patch), strides=patch, padding="VALID", dtype=self.dtype,
        param_dtype=self.param_dtype, name="patch_embedding")(features[..., None].astype(
            self.dtype))  # [B, time_patches, freq_patches, width]
    # The patch embeddings are the perturbation point of adversarial training.
    patches = perturbation_point(
        self, patches.reshape(batch, time_patches * freq_patches, self.width))
    tokens = prepend_cls_add_positions(self, patches, dtype=self.dtype,
                                       param_dtype=self.param_dtype)
    tokens = nn.Dropout(self.dropout_rate)(tokens, deterministic=not train)
    if lengths is None:
      mask = jnp.ones(tokens.shape[:2], dtype=bool)
    else:
      starts = jnp.arange(time_patches) * (patch * hop)  # first sample of each time patch
      real = jnp.repeat(starts[None, :] < lengths[:, None], freq_patches, axis=1)
      mask = jnp.concatenate([jnp.ones((batch, 1), bool), real], axis=1)
    return Encoder(self.depth, self.num_heads, self.mlp_dim, dropout_rate=self.dropout_rate,
                   dtype=self.dtype, param_dtype=self.param_dtype, options=self.options,
                   drop_path_rate=self.drop_path_rate, name="encoder")(Tokens(tokens, mask),
                                                                       train=train)
