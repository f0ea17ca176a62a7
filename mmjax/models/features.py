"""Audio features in JAX: framing, Hann-windowed power spectrum, log-mel, MFCC.

Conventions (fixed, so a checkpoint always sees the same features):
- Frames are not centred: frame f covers samples [f * hop, f * hop + n_fft) and a trailing
  partial frame is dropped, so `num_frames(samples) = 1 + (samples - n_fft) // hop`.
- The window is the periodic Hann window (`scipy.signal.get_window("hann", n_fft)`).
- Power is |rfft(frame * window)|^2, unscaled, over n_fft // 2 + 1 bins.
- The mel scale is HTK's, mel(f) = 2595 log10(1 + f / 700) (Slaney's scale is linear below
  1 kHz instead; HTK is a single formula and needs no special cases). Filters are triangles in
  Hz between mel-spaced edges with peak 1 (no Slaney area normalisation): a pure tone gives the
  same response whatever band it falls in.
- log-mel is the natural log of max(mel power, log_floor); MFCC is the orthonormal DCT-II of
  the log-mel over the mel axis, first n_mfcc coefficients.
Everything is computed in float32 whatever the model's compute dtype; the filterbank and DCT
matrices are built once in numpy and enter jitted code as constants.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.config import ConfigError

FEATURES = ("log_mel", "mfcc")


def hz_to_mel(hz):
  """HTK mel scale: 1000 Hz is (almost exactly) 1000 mel."""
  return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def mel_to_hz(mel):
  return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def num_frames(samples: int, n_fft: int, hop_length: int) -> int:
  """Frames of a `samples`-long waveform (no centring; a trailing partial frame is dropped)."""
  if samples < n_fft:
    raise ValueError(f"a waveform of {samples} samples is shorter than n_fft={n_fft}")
  return 1 + (samples - n_fft) // hop_length


def _read_only(array: np.ndarray) -> np.ndarray:
  """float32 copy that cannot be modified (the cached matrices are shared by every caller)."""
  array = array.astype(np.float32)
  array.setflags(write=False)
  return array


@functools.lru_cache(maxsize=32)
def hann_window(n_fft: int) -> np.ndarray:
  """Periodic Hann window [n_fft] float32 (the DFT-even form used for spectral analysis)."""
  return _read_only(0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft))


@functools.lru_cache(maxsize=32)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0,
                   f_max: float | None = None) -> np.ndarray:
  """Triangular HTK-mel filters [n_fft // 2 + 1, n_mels] float32 (column m = mel band m).

  Band m rises linearly (in Hz) from edge m to a peak of 1 at edge m + 1 and falls to 0 at
  edge m + 2, where the n_mels + 2 edges are equally spaced in mel from f_min to f_max
  (default: the Nyquist frequency).

  Raises:
    ConfigError: if a band holds no FFT bin (too many mels for this n_fft).
  """
  f_max = sample_rate / 2.0 if f_max is None else f_max
  if not 0.0 <= f_min < f_max <= sample_rate / 2.0:
    raise ConfigError(f"mel range [{f_min}, {f_max}] Hz must satisfy 0 <= f_min < f_max <= "
                      f"sample_rate / 2 = {sample_rate / 2}")
  edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
  bins = np.arange(n_fft // 2 + 1) * sample_rate / n_fft  # [bins] Hz
  lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]  # [n_mels] each
  rising = (bins[:, None] - lower) / (centre - lower)
  falling = (upper - bins[:, None]) / (upper - centre)
  filters = np.maximum(0.0, np.minimum(rising, falling))
  empty = np.flatnonzero(filters.max(axis=0) <= 0.0)
  if empty.size:
    raise ConfigError(f"n_mels={n_mels} is too many for n_fft={n_fft} at sample_rate="
                      f"{sample_rate}: mel band {empty[0]} holds no FFT bin")
  return _read_only(filters)


@functools.lru_cache(maxsize=32)
def dct_matrix(n_in: int, n_out: int) -> np.ndarray:
  """Orthonormal DCT-II as a matrix [n_in, n_out]: `x @ D` = the first n_out coefficients."""
  k = np.arange(n_out)[None, :]
  n = np.arange(n_in)[:, None]
  basis = np.cos(np.pi * k * (2 * n + 1) / (2 * n_in)) * np.sqrt(2.0 / n_in)
  basis[:, 0] /= np.sqrt(2.0)
  return _read_only(basis)


def frame_signal(waveforms: jax.Array, n_fft: int, hop_length: int) -> jax.Array:
  """[B, samples] -> [B, frames, n_fft] overlapping frames (a gather with static indices)."""
  frames = num_frames(waveforms.shape[-1], n_fft, hop_length)
  index = np.arange(frames)[:, None] * hop_length + np.arange(n_fft)[None, :]
  return waveforms[:, index]


def power_spectrogram(waveforms: jax.Array, n_fft: int, hop_length: int) -> jax.Array:
  """[B, samples] -> |rfft(frame * hann)|^2 [B, frames, n_fft // 2 + 1] float32."""
  frames = frame_signal(waveforms.astype(jnp.float32), n_fft, hop_length)
  spectrum = jnp.fft.rfft(frames * hann_window(n_fft), n=n_fft, axis=-1)
  return jnp.square(spectrum.real) + jnp.square(spectrum.imag)


@dataclasses.dataclass(frozen=True)
class FeatureOptions:
  """How waveforms become features; validated on construction.

  Attributes:
    sample_rate: samples per second of the input waveforms.
    n_fft: frame (and FFT) length in samples.
    hop_length: samples between the starts of consecutive frames.
    n_mels: mel bands.
    features: "log_mel" ([frames, n_mels]) or "mfcc" ([frames, n_mfcc]).
    n_mfcc: cepstral coefficients kept when features == "mfcc".
    log_floor: power values below it are raised to it before the log (silence -> log(floor)).
  """

  sample_rate: int = 16000
  n_fft: int = 400
  hop_length: int = 160
  n_mels: int = 80
  features: str = "log_mel"
  n_mfcc: int = 40
  log_floor: float = 1e-10

  def __post_init__(self):
    for name in ("sample_rate", "n_fft", "hop_length", "n_mels", "n_mfcc"):
      value = getattr(self, name)
      if not isinstance(value, int | np.integer) or value <= 0:
        raise ConfigError(f"audio {name} must be a positive integer, got {value!r}")
    if self.features not in FEATURES:
      raise ConfigError(f"unknown audio features '{self.features}'; expected one of "
                        f"{', '.join(FEATURES)}")
    if self.features == "mfcc" and self.n_mfcc > self.n_mels:
      raise ConfigError(f"audio n_mfcc={self.n_mfcc} must be <= n_mels={self.n_mels}")
    if not self.log_floor > 0:
      raise ConfigError(f"audio log_floor must be > 0, got {self.log_floor}")
    mel_filterbank(self.sample_rate, self.n_fft, self.n_mels)  # raises if a band is empty

  @property
  def num_features(self) -> int:
    return self.n_mfcc if self.features == "mfcc" else self.n_mels

  def num_frames(self, samples: int) -> int:
    return num_frames(samples, self.n_fft, self.hop_length)

  def log_mel(self, waveforms: jax.Array) -> jax.Array:
    """[B, samples] -> log mel power [B, frames, n_mels] float32."""
    power = power_spectrogram(waveforms, self.n_fft, self.hop_length)
    mel = jnp.matmul(power, mel_filterbank(self.sample_rate, self.n_fft, self.n_mels),
                     precision=jax.lax.Precision.HIGHEST)
    return jnp.log(jnp.maximum(mel, self.log_floor))

  def __call__(self, waveforms: jax.Array) -> jax.Array:
    """[B, samples] float -> [B, frames, num_features] float32 (log-mel or MFCC)."""
    log_mel = self.log_mel(waveforms)
    if self.features == "mfcc":
      return jnp.matmul(log_mel, dct_matrix(self.n_mels, self.n_mfcc),
                        precision=jax.lax.Precision.HIGHEST)
    return log_mel
