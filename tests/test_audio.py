"""Audio features (against scipy / numpy references) and the audio spectrogram encoder."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.fft
import scipy.signal

from mmjax.config import ConfigError
from mmjax.models import audio as audio_lib
from mmjax.models import features as features_lib

RNG = jax.random.key(0)
# Small settings for the encoder tests: 1,024 samples -> 31 frames x 16 mels.
SMALL = dict(sample_rate=8000, n_fft=64, hop_length=32, n_mels=16)


def tone(freq, seconds=0.25, sample_rate=16000, phase=0.3):
  t = np.arange(int(seconds * sample_rate)) / sample_rate
  return np.sin(2 * np.pi * freq * t + phase).astype(np.float32)


def small_encoder(**kw):
  return audio_lib.AudioEncoder(**audio_lib.parse_variant("nano/4"), **{**SMALL, **kw})


def test_hann_window_matches_scipy():
  np.testing.assert_allclose(features_lib.hann_window(400),
                             scipy.signal.get_window("hann", 400), atol=1e-7)


def test_power_spectrogram_matches_scipy_stft():
  waveforms = np.random.default_rng(0).normal(size=(2, 4000)).astype(np.float32)
  n_fft, hop = 400, 160
  power = np.asarray(jax.jit(features_lib.power_spectrogram, static_argnums=(1, 2))(
      waveforms, n_fft, hop))
  for i in range(2):
    _, _, stft = scipy.signal.stft(
        waveforms[i].astype(np.float64), window="hann", nperseg=n_fft, noverlap=n_fft - hop,
        boundary=None, padded=False, detrend=False, scaling="spectrum")
    # scaling="spectrum" divides by the window sum; undo it.
    expected = (np.abs(stft) * scipy.signal.get_window("hann", n_fft).sum()).T ** 2
    assert power[i].shape == expected.shape == (1 + (4000 - n_fft) // hop, n_fft // 2 + 1)
    np.testing.assert_allclose(power[i], expected, rtol=1e-4, atol=1e-4 * expected.max())


def test_framing_matches_numpy_strides():
  waveforms = np.arange(2 * 50, dtype=np.float32).reshape(2, 50)
  frames = features_lib.frame_signal(jnp.asarray(waveforms), 8, 3)
  expected = np.lib.stride_tricks.sliding_window_view(waveforms, 8, axis=1)[:, ::3]
  np.testing.assert_array_equal(frames, expected)
  assert features_lib.num_frames(50, 8, 3) == frames.shape[1] == 15
  with pytest.raises(ValueError, match="shorter than n_fft"):
    features_lib.num_frames(7, 8, 3)


def test_htk_mel_scale():
  assert features_lib.hz_to_mel(1000.0) == pytest.approx(1000.0, abs=0.05)
  assert features_lib.hz_to_mel(0.0) == 0.0
  hz = np.array([50.0, 440.0, 3000.0, 7900.0])
  np.testing.assert_allclose(features_lib.mel_to_hz(features_lib.hz_to_mel(hz)), hz)


def test_mel_filterbank_shape_peaks_and_coverage():
  sample_rate, n_fft, n_mels = 16000, 512, 40
  filters = features_lib.mel_filterbank(sample_rate, n_fft, n_mels)
  bins = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
  assert filters.shape == (n_fft // 2 + 1, n_mels) and filters.dtype == np.float32
  assert (filters >= 0).all() and filters.max() <= 1.0
  peaks = bins[filters.argmax(axis=0)]
  assert (np.diff(peaks) > 0).all()
  # Centres equally spaced on the HTK mel scale, written out independently.
  top = 2595 * np.log10(1 + 8000 / 700)
  centres = 700 * (10 ** (np.linspace(0, top, n_mels + 2)[1:-1] / 2595) - 1)
  assert np.abs(peaks - centres).max() <= sample_rate / n_fft
  # Every bin strictly inside (0, Nyquist) is covered by some band; DC and Nyquist are not.
  coverage = filters.sum(axis=1)
  assert (coverage[1:-1] > 1e-3).all() and coverage[0] < 1e-6 and coverage[-1] < 1e-6
  # Neighbouring triangles overlap exactly as a partition of unity between the first and
  # last centres.
  inside = (bins >= centres[0]) & (bins <= centres[-1])
  np.testing.assert_allclose(coverage[inside], 1.0, atol=1e-5)


def test_too_many_mels_is_a_config_error():
  with pytest.raises(ConfigError, match="n_mels=128 is too many for n_fft=400"):
    features_lib.mel_filterbank(16000, 400, 128)


@pytest.mark.parametrize("band", [5, 17, 30])
def test_sine_tone_peaks_in_its_mel_band(band):
  options = features_lib.FeatureOptions(n_fft=512, hop_length=160, n_mels=40)
  top = 2595 * np.log10(1 + 8000 / 700)
  centre = 700 * (10 ** (np.linspace(0, top, 42)[band + 1] / 2595) - 1)
  log_mel = np.asarray(jax.jit(options.log_mel)(tone(centre)[None]))[0]
  assert log_mel.shape == (options.num_frames(4000), 40)
  assert (log_mel.argmax(axis=1) == band).all()


def test_log_floor_for_silence():
  options = features_lib.FeatureOptions(log_floor=1e-6)
  log_mel = options.log_mel(jnp.zeros((1, 800)))
  np.testing.assert_allclose(log_mel, np.log(1e-6), rtol=1e-6)


def test_mfcc_is_orthonormal_dct_of_log_mel():
  waveforms = np.random.default_rng(1).normal(size=(2, 2000)).astype(np.float32)
  options = features_lib.FeatureOptions(features="mfcc", n_mfcc=13)
  mfcc = np.asarray(jax.jit(options)(waveforms))
  log_mel = np.asarray(options.log_mel(waveforms), np.float64)
  expected = scipy.fft.dct(log_mel, type=2, norm="ortho", axis=-1)[..., :13]
  assert mfcc.shape == (2, options.num_frames(2000), 13) == (2, 11, 13)
  np.testing.assert_allclose(mfcc, expected, rtol=1e-4, atol=1e-4)


def test_features_fixed_shapes_and_batch_independence():
  options = features_lib.FeatureOptions(**SMALL)
  waveforms = np.random.default_rng(2).normal(size=(3, 1024)).astype(np.float32)
  compiled = jax.jit(options).lower(jax.ShapeDtypeStruct((3, 1024), jnp.float32)).compile()
  out = np.asarray(compiled(waveforms))
  assert out.shape == (3, 31, 16) and out.dtype == np.float32
  for i in range(3):
    np.testing.assert_allclose(out[i], np.asarray(options(waveforms[i:i + 1]))[0], atol=1e-5)


@pytest.mark.parametrize("field, value, message", [
    ("features", "spectrum", "unknown audio features 'spectrum'"),
    ("n_fft", 0, "audio n_fft must be a positive integer"),
    ("hop_length", 2.5, "audio hop_length must be a positive integer"),
])
def test_bad_feature_options_are_config_errors(field, value, message):
  with pytest.raises(ConfigError, match=message):
    features_lib.FeatureOptions(**{field: value})
  with pytest.raises(ConfigError, match=message):
    small_encoder(**{field: value})
  with pytest.raises(ConfigError, match="n_mfcc=20 must be <= n_mels=16"):
    small_encoder(features="mfcc", n_mfcc=20)


def test_variants():
  assert audio_lib.parse_variant("B/16") == dict(width=768, depth=12, mlp_dim=3072,
                                                 num_heads=12, patch_size=16)
  assert audio_lib.parse_variant("mu/8", depth=1)["depth"] == 1
  for bad in ("S", "S/x", "S/0"):
    with pytest.raises(ConfigError, match="NAME/PATCH"):
      audio_lib.parse_variant(bad)
  with pytest.raises(ConfigError, match="unknown model size 'Q'"):
    audio_lib.parse_variant("Q/16")


@pytest.fixture(scope="module")
def small():
  """The small log-mel encoder, its parameters, a jitted apply and waveforms [3, 1024]."""
  encoder = small_encoder()
  waveforms = np.asarray(jax.random.normal(RNG, (3, 1024)))
  params = jax.jit(lambda w: encoder.init(RNG, w, train=False))(waveforms)
  apply = jax.jit(functools.partial(encoder.apply, train=False))
  return encoder, params, apply, waveforms


@pytest.mark.parametrize("features, num_features", [("log_mel", 16), ("mfcc", 10)])
def test_encoder_shapes_and_token_counts(features, num_features):
  encoder = small_encoder(features=features, n_mfcc=10)
  assert encoder.num_frames(1024) == 31
  # 31 frames -> 8 time patches of 4; 16 mels -> 4 (or 10 MFCCs -> 3) frequency patches.
  assert encoder.patch_grid(1024) == (8, -(-num_features // 4))
  out, params = jax.eval_shape(lambda w: encoder.init_with_output(RNG, w, train=False),
                               jax.ShapeDtypeStruct((2, 1024), jnp.float32))
  assert out.tokens.shape == (2, encoder.num_tokens(1024), 32)
  assert out.mask.shape == out.tokens.shape[:2] and out.mask.dtype == bool
  assert params["params"]["pos_embedding"].shape == (1, encoder.num_tokens(1024), 32)


def test_encoder_dtype_policy_and_gradients(small):
  _, params, _, waveforms = small
  encoder = small_encoder(dtype=jnp.bfloat16)
  shapes = jax.eval_shape(lambda w: encoder.init(RNG, w, train=False), waveforms)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes))

  def loss(params):
    tokens = encoder.apply(params, waveforms, train=False).tokens
    assert tokens.dtype == jnp.bfloat16
    tokens = tokens.astype(jnp.float32)
    return jnp.sum(tokens * jnp.arange(tokens.shape[-1])), tokens

  grads, tokens = jax.jit(jax.grad(loss, has_aux=True))(params)
  assert bool(jnp.isfinite(tokens).all())
  for path, grad in jax.tree_util.tree_leaves_with_path(grads):
    assert grad.dtype == jnp.float32
    assert float(jnp.abs(grad).max()) > 0, jax.tree_util.keystr(path)


def test_encoder_lengths_mask_and_invariance(small):
  _, params, apply, waveforms = small
  lengths = np.array([1024, 500, 129])
  out = apply(params, waveforms, lengths)
  assert bool(apply(params, waveforms).mask.all())
  # Time patch k starts at sample 128 k; 4 frequency patches each, plus [CLS].
  expected_real = 1 + 4 * np.ceil(lengths / 128).astype(int)
  np.testing.assert_array_equal(np.asarray(out.mask).sum(axis=1), expected_real)
  assert bool(out.mask[:, 0].all())
  # Real tokens ignore whatever lies past each waveform's length.
  noisy = np.where(np.arange(1024) < lengths[:, None], waveforms, 7.0).astype(np.float32)
  noisy_out = apply(params, noisy, lengths)
  mask = np.asarray(out.mask)
  np.testing.assert_allclose(np.asarray(noisy_out.tokens)[mask], np.asarray(out.tokens)[mask],
                             atol=1e-5)
  # Without lengths the same noise does reach the tokens.
  plain, noisy_plain = apply(params, waveforms).tokens, apply(params, noisy).tokens
  assert not np.allclose(np.asarray(noisy_plain)[mask], np.asarray(plain)[mask], atol=1e-3)


def test_encoder_batch_independence(small):
  _, params, apply, waveforms = small
  batched = apply(params, waveforms).tokens
  for i in range(3):
    alone = apply(params, waveforms[i:i + 1]).tokens
    np.testing.assert_allclose(batched[i], alone[0], atol=1e-5)
