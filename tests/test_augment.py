"""Augmentation ops (mmjax/data/augment.py): each op on fixed inputs against a hand-computed
reference, parsing errors, mixed-target loss, SpecAugment in the audio tower, and the
determinism of the augmented training iterator."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmjax.config import ConfigError
from mmjax.data import augment, pipeline
from mmjax.data.tokenizer import TextEncoder, load_tokenizer
from mmjax.models import audio as audio_lib
from mmjax.tasks.classification import ClassificationTask

# Token ids as mmjax's vocabularies number them: [PAD]=0, [CLS]=2, [SEP]=3, [MASK]=4.
SPECIAL = augment.SpecialTokens(keep=(2, 3, 0), pad=0, mask=4)


def make_config(spec, **overrides):
  config = ml_collections.ConfigDict(dict(
      augment=spec, seed=0, data=dict(flip_safe=False),
      task=dict(name="classification", main="label"), losses=dict(label=1.0, digit=0.5)))
  config.update(overrides)
  return config


class FakePreprocessor:
  """Examples whose image is constant (the value of `value`), with two targets."""

  fields = {"image": "image", "label": "label", "digit": "digit"}
  targets = ("label", "digit")
  text_encoder = None

  def example(self, raw):
    return {"image": np.full((4, 4, 1), raw["value"], np.float32),
            "label": np.int32(raw["label"]), "digit": np.int32(raw["digit"])}

  def collate(self, examples):
    batch = {k: np.stack([e[k] for e in examples]) for k in ("image", "label", "digit")}
    batch["example_mask"] = np.ones(len(examples), bool)
    return batch


FAKE_SOURCE = [dict(value=-1.0 + 0.25 * i, label=i % 2, digit=i) for i in range(8)]


def ramp(height=8, width=8, channels=2):
  """An image linear in row and column: bilinear sampling reproduces it exactly."""
  rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  image = np.stack([0.1 * rows - 0.05 * cols, -0.08 * rows + 0.1 * cols,
                    0.05 * rows + 0.02 * cols], -1)[..., :channels]
  return (image - 0.3).astype(np.float32)


def test_parse_is_strict_and_names_the_field():
  ops = augment.parse("random_resized_crop(scale=(0.7, 1.0))|color_jitter(0.2)|token_dropout")
  assert [op.name for op in ops] == ["random_resized_crop", "color_jitter", "token_dropout"]
  assert [op.stage for op in ops] == ["example", "example", "tokens"]
  assert [op.name for op in augment.parse(("translate(0.1)", "gain(db=3)"))] == \
      ["translate", "gain"]
  assert augment.parse("") == [] and augment.parse(()) == [] and augment.parse(None) == []
  for spec, words in [
      ("rotate_everything(3)", ["unknown op 'rotate_everything'", "known ops:", "mixup"]),
      ("color_jitter(brightnes=0.2)", ["unexpected keyword", "color_jitter(strength"]),
      ("color_jitter(1.5)", ["strength must be a number in [0, 1]"]),
      ("random_resized_crop(scale=(0.9, 0.5))", ["scale must satisfy"]),
      ("translate(x)", ["Python literals"]),
      ("translate(0.1)||gain", ["an empty op"]),
      ("translate(", ["cannot parse"]),
      ("spec_augment(2)", ["config.model.audio.spec_augment"]),
  ]:
    with pytest.raises(ConfigError) as error:
      augment.parse(spec)
    message = str(error.value)
    assert message.startswith("config.augment: ") and "\n" not in message, message
    assert all(w in message for w in words), message


def test_flip_lr_mirrors_and_needs_a_task_that_declares_it_label_safe():
  image = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2) / 12
  flip = augment.flip_lr(p=1.0)
  np.testing.assert_array_equal(flip(image, np.random.default_rng(0)), image[:, ::-1, :])
  assert augment.flip_lr(p=0.0)(image, np.random.default_rng(0)) is image
  flips = [augment.flip_lr(0.5)(image, np.random.default_rng(s))[0, 0, 0] != image[0, 0, 0]
           for s in range(200)]
  assert 70 < sum(flips) < 130
  with pytest.raises(ConfigError, match="handwritten digits.*config.data.flip_safe=True"):
    augment.from_config(make_config("flip_lr"), FakePreprocessor())
  config = make_config("flip_lr", data=dict(flip_safe=True))
  assert augment.from_config(config, FakePreprocessor()).ops[0].name == "flip_lr"


def test_random_resized_crop_is_a_resized_sub_window():
  image = ramp()
  for seed in range(5):
    window = augment.crop_window(np.random.default_rng(seed), 8, 8, (0.3, 0.8), (0.5, 2.0))
    top, left, h, w = window
    assert 0 <= top and top + h <= 8 and 0 <= left and left + w <= 8
    assert 0.3 <= h * w / 64 <= 0.8 + 1e-9 and 0.5 <= w / h <= 2.0
    out = augment.random_resized_crop(scale=(0.3, 0.8), ratio=(0.5, 2.0))(
        image, np.random.default_rng(seed))
    assert out.shape == image.shape and out.dtype == np.float32
    # The output samples the window at its own pixel centres (edge pixels repeat past it).
    ys = np.clip(top + (np.arange(8) + 0.5) * h / 8 - 0.5, 0, 7)
    xs = np.clip(left + (np.arange(8) + 0.5) * w / 8 - 0.5, 0, 7)
    expected = ramp(8, 8)[0, 0] + np.stack(
        [0.1 * ys[:, None] - 0.05 * xs[None, :], -0.08 * ys[:, None] + 0.1 * xs[None, :]], -1)
    np.testing.assert_allclose(out, expected, atol=1e-5)
  identity = augment.random_resized_crop(scale=(1.0, 1.0), ratio=(1.0, 1.0))
  np.testing.assert_allclose(identity(image, np.random.default_rng(0)), image, atol=1e-6)


def test_translate_shifts_and_fills_with_the_border():
  image = np.full((6, 6, 1), -1.0, np.float32)
  image[2:4, 1:3] = 1.0
  shifted = augment.affine(image, np.eye(2), (1.0, 2.0))  # down 1, right 2
  expected = np.full_like(image, -1.0)
  expected[3:5, 3:5] = 1.0
  np.testing.assert_allclose(shifted, expected, atol=1e-6)
  op = augment.translate(0.25)
  rng = np.random.default_rng(3)
  shift = np.random.default_rng(3).uniform(-0.25, 0.25, 2) * 6
  np.testing.assert_allclose(op(image, rng), augment.affine(image, np.eye(2), tuple(shift)))
  assert np.abs(shift).max() > 0.1


def test_color_jitter_scales_brightness_and_contrast_by_the_drawn_factors():
  image = ramp(4, 4, 3) * 0.5
  unit = (image + 1) / 2
  np.testing.assert_allclose(augment.adjust_brightness(image, 1.2), unit * 1.2 * 2 - 1,
                             atol=1e-6)
  contrast = (augment.adjust_contrast(image, 0.5) + 1) / 2
  grey_mean = (unit @ np.array([0.299, 0.587, 0.114])).mean()
  np.testing.assert_allclose(contrast, (unit - grey_mean) * 0.5 + grey_mean, atol=1e-6)
  grey = np.repeat(ramp(4, 4, 1), 3, axis=-1)
  np.testing.assert_allclose(augment.adjust_saturation(grey, 0.3), grey, atol=1e-6)
  # The op draws brightness, contrast and saturation factors in that order.
  factors = np.random.default_rng(7).uniform([0.8, 0.7, 1.0], [1.2, 1.3, 1.0])
  expected = augment.adjust_contrast(augment.adjust_brightness(image, factors[0]), factors[1])
  out = augment.color_jitter(brightness=0.2, contrast=0.3)(image, np.random.default_rng(7))
  np.testing.assert_allclose(out, expected, atol=1e-6)
  assert not np.allclose(out, image)


def test_randaugment_transforms_at_magnitude_zero_are_the_identity():
  digit = np.round(np.random.default_rng(0).uniform(0, 255, (8, 8, 1))) * 2 / 255 - 1
  digit = digit.astype(np.float32)
  for name, transform in augment.RANDAUGMENT_OPS.items():
    np.testing.assert_allclose(transform(digit, 0.0, 1.0), digit, atol=1e-5, err_msg=name)
    if name != "identity":
      assert not np.allclose(transform(digit, 1.0, -1.0), digit, atol=1e-3), name
  out = augment.randaugment(n=3, m=10)(digit, np.random.default_rng(1))
  assert out.shape == digit.shape and -1 <= out.min() and out.max() <= 1
  # Posterize to 4 bits keeps the top 4 bits of each 8-bit level.
  levels = np.round((augment.posterize(digit, 4) + 1) / 2 * 255)
  np.testing.assert_array_equal(levels, np.round((digit + 1) / 2 * 255).astype(int) & 0xF0)


def test_augmentation_is_a_function_of_seed_and_position():
  augmenter = augment.from_config(make_config("translate(0.3)|color_jitter(0.3)"),
                                  FakePreprocessor())
  raw = {"value": 0.0, "label": 1, "digit": 3}
  augmenter.preprocessor.example = lambda raw: {"image": ramp(8, 8, 1), "label": 1}
  first = augmenter.example(raw, 5, FAKE_SOURCE)["image"]
  np.testing.assert_array_equal(first, augmenter.example(raw, 5, FAKE_SOURCE)["image"])
  assert not np.allclose(first, augmenter.example(raw, 6, FAKE_SOURCE)["image"])
  augmenter.seed = 1
  assert not np.allclose(first, augmenter.example(raw, 5, FAKE_SOURCE)["image"])


def test_mixup_mixes_inputs_and_targets_and_the_loss_is_the_mixed_cross_entropy():
  augmenter = augment.from_config(make_config("mixup(alpha=0.4, heads=('label', 'digit'))"),
                                  FakePreprocessor())
  examples = [augmenter.example(FAKE_SOURCE[i], 100 + i, FAKE_SOURCE) for i in range(8)]
  batch = augmenter.collate(examples)
  lam = batch["mix_lambda"]
  assert lam.dtype == np.float32 and ((0.5 <= lam) & (lam <= 1.0)).all() and lam.std() > 0
  # Each image is lam * its own constant + (1 - lam) * its partner's, whose targets it holds.
  own = np.array([s["value"] for s in FAKE_SOURCE])
  partner_value = np.array([FAKE_SOURCE[d]["value"] for d in batch["mix_digit"]])
  np.testing.assert_allclose(batch["image"][:, 0, 0, 0], lam * own + (1 - lam) * partner_value,
                             atol=1e-6)
  np.testing.assert_array_equal(batch["mix_label"], batch["mix_digit"] % 2)

  task = ClassificationTask({"label": 2, "digit": 8}, {"label": 1.0, "digit": 0.5})
  logits = jax.random.normal(jax.random.key(0), (8, 8))
  outputs = {"label": logits[:, :2], "digit": logits}
  device = {k: jnp.asarray(v) for k, v in batch.items()}
  total, metrics = task.loss(outputs, device)

  def cross_entropy(z, y):
    z = np.asarray(z, np.float64)
    return -(z - np.log(np.exp(z).sum(-1, keepdims=True)))[np.arange(len(y)), y]

  for name in ("label", "digit"):
    expected = (lam * cross_entropy(outputs[name], batch[name]) + (1 - lam) *
                cross_entropy(outputs[name], batch[f"mix_{name}"])).mean()
    np.testing.assert_allclose(metrics[f"{name}/loss"], expected, rtol=1e-5)
  np.testing.assert_allclose(total, metrics["label/loss"] + 0.5 * metrics["digit/loss"],
                             rtol=1e-6)
  # Without the mix keys the loss is the plain cross-entropy, as before.
  plain = {k: v for k, v in device.items() if not k.startswith("mix")}
  unmixed = task.loss(outputs, plain)[1]["digit/loss"]
  assert unmixed == task.head_loss(outputs["digit"], plain["digit"],
                                   plain["example_mask"].astype(jnp.float32))[0]
  np.testing.assert_allclose(unmixed, cross_entropy(logits, batch["digit"]).mean(), rtol=1e-5)


def test_cutmix_pastes_a_box_of_the_partner_and_weighs_targets_by_area():
  augmenter = augment.from_config(make_config("cutmix(alpha=1.0, heads=('digit',))"),
                                  FakePreprocessor())
  boxes = 0
  for position in range(20):
    example = augmenter.example(FAKE_SOURCE[0], position, FAKE_SOURCE)
    partner = FAKE_SOURCE[example["mix_digit"]]["value"]
    pasted = example["image"][..., 0] != FAKE_SOURCE[0]["value"]
    if partner != FAKE_SOURCE[0]["value"] and pasted.any():
      boxes += 1
      np.testing.assert_array_equal(example["image"][..., 0][pasted], partner)
      rows, cols = np.flatnonzero(pasted.any(1)), np.flatnonzero(pasted.any(0))
      assert pasted.sum() == len(rows) * len(cols)  # one rectangle
      assert np.ptp(rows) + 1 == len(rows) and np.ptp(cols) + 1 == len(cols)
      assert example["mix_lambda"] == pytest.approx(1 - pasted.mean())
    assert 0.5 <= example["mix_lambda"] <= 1.0
    assert "mix_label" not in example
  assert boxes >= 5


def test_mixing_is_for_classification_heads_only():
  with pytest.raises(ConfigError, match="classification heads; config.task.name is 'gen"):
    augment.from_config(make_config("mixup", task=dict(name="generation")), FakePreprocessor())
  with pytest.raises(ConfigError, match="'answer' is not a head this run trains; .*label"):
    augment.from_config(make_config("cutmix(heads=('answer',))"), FakePreprocessor())
  with pytest.raises(ConfigError, match="at most one of mixup, cutmix"):
    augment.from_config(make_config("mixup|cutmix"), FakePreprocessor())
  assert augment.from_config(make_config(""), FakePreprocessor()) is None


def test_token_dropout_keeps_special_tokens_and_drops_about_rate():
  ids = np.array([2, 10, 11, 12, 13, 14, 15, 16, 17, 3, 0, 0], np.int32)
  mask = ids != 0
  dropped, total = 0, 0
  for seed in range(300):
    new_ids, new_mask = augment.token_dropout(0.3)(ids, mask, np.random.default_rng(seed),
                                                   SPECIAL)
    kept = new_ids[new_mask]
    assert kept[0] == 2 and kept[-1] == 3 and (new_ids[~new_mask] == 0).all()
    assert new_mask[:len(kept)].all()  # real tokens first, padding after
    words = kept[1:-1]
    assert (np.diff(words) > 0).all() and set(words) <= set(range(10, 18))  # order kept
    dropped += 8 - len(words)
    total += 8
  assert abs(dropped / total - 0.3) < 0.03


def test_span_mask_masks_contiguous_spans_of_word_pieces():
  ids = np.array([2, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 3, 0, 0], np.int32)
  mask = ids != 0
  single_runs = {}
  for span in (1, 4):
    runs = []
    for seed in range(100):
      new_ids, new_mask = augment.span_mask(rate=0.4, span=span)(
          ids, mask, np.random.default_rng(seed), SPECIAL)
      np.testing.assert_array_equal(new_mask, mask)
      masked = new_ids == SPECIAL.mask
      assert masked.sum() == 4  # round(0.4 * 10) word pieces
      assert not masked[[0, 11, 12, 13]].any()  # [CLS], [SEP], [PAD]
      np.testing.assert_array_equal(new_ids[~masked], ids[~masked])
      runs.append(np.sum(masked & ~np.roll(masked, 1)))  # contiguous runs of [MASK]
    single_runs[span] = np.mean(np.array(runs) == 1)
  # 4 single tokens at random form one run 7 / 210 of the time; spans of up to 4 often do.
  assert single_runs[1] < 0.1 and single_runs[4] > 0.3, single_runs


def test_gain_scales_the_waveform_by_a_factor_in_the_range():
  wave = np.sin(np.linspace(0, 20, 400)).astype(np.float32) * 0.5
  factors = []
  for seed in range(100):
    out = augment.gain(db=6.0)(wave, np.random.default_rng(seed))
    factor = out[10] / wave[10]
    np.testing.assert_allclose(out, wave * factor, rtol=1e-5, atol=1e-7)
    factors.append(factor)
  assert 10 ** (-6 / 20) <= min(factors) < 0.6 and 1.7 < max(factors) <= 10 ** (6 / 20)
  assert augment.gain(db=(3.0, 3.0))(wave, np.random.default_rng(0))[10] == \
      pytest.approx(wave[10] * 10 ** 0.15)


def test_spec_augment_masks_bands_of_the_log_mel_in_training_only():
  features = np.random.default_rng(1).normal(size=(64, 24, 16)).astype(np.float32)

  @jax.jit  # one compilation, not one per eager op
  def masks_and_masked(key, features):
    time, freq = audio_lib.spec_augment_masks(key, 64, 20, 16, time_masks=2, time_width=5,
                                              freq_masks=1, freq_width=4)
    return time, freq, audio_lib.mask_features(features, time, freq)  # 4 padding frames

  time, freq, out = map(np.asarray, masks_and_masked(jax.random.key(0), features))
  assert time.shape == (64, 20) and freq.shape == (64, 16)
  for mask, runs, width in ((time, 2, 5), (freq, 1, 4)):
    assert mask.sum(1).max() <= runs * width and mask.any(1).mean() > 0.5
    starts = (mask & ~np.pad(mask, ((0, 0), (1, 0)))[:, :-1]).sum(1)
    assert starts.max() <= runs  # at most `runs` contiguous bands
  assert freq.sum(1).max() == 4 and not freq.all(1).any()
  masked = np.pad(time, ((0, 0), (0, 4)))[:, :, None] | freq[:, None]
  np.testing.assert_array_equal(out[~masked], features[~masked])
  means = np.broadcast_to(features.mean((1, 2))[:, None, None], masked.shape)
  np.testing.assert_allclose(out[masked], means[masked], atol=1e-6)

  size = dict(width=16, depth=1, mlp_dim=32, num_heads=2, patch_size=4, sample_rate=8000,
              n_fft=128, hop_length=64, n_mels=16)
  plain = audio_lib.AudioEncoder(**size)
  masking = audio_lib.AudioEncoder(**size, spec_augment=dict(time_masks=2, time_width=4,
                                                              freq_masks=2, freq_width=4))

  @jax.jit
  def outputs(waves):
    params = plain.init(jax.random.key(3), waves, train=False)
    run = lambda model, train: model.apply(
        params, waves, train=train, rngs={"dropout": jax.random.key(4)}).tokens
    return run(plain, False), run(masking, False), run(plain, True), run(masking, True)

  waves = np.random.default_rng(2).normal(size=(2, 1024)).astype(np.float32) * 0.1
  evaluation, masking_eval, plain_train, masking_train = outputs(waves)
  np.testing.assert_array_equal(masking_eval, evaluation)
  np.testing.assert_array_equal(plain_train, evaluation)  # no dropout: the masks only
  assert not np.allclose(masking_train, evaluation)
  with pytest.raises(ConfigError, match="config.model.audio.spec_augment"):
    audio_lib.AudioEncoder(**size, spec_augment=dict(time_mask=2))


def test_augmented_training_iterator_is_deterministic_resumable_and_topology_free(grading):
  encoder = TextEncoder(load_tokenizer(grading.tokenizer_path), 24)
  preprocessor = pipeline.Preprocessor({"image": "image", "text": "question", "label": "label"},
                                       encoder)
  spec = "random_resized_crop(scale=(0.5, 1.0))|color_jitter(0.3)|mixup|token_dropout(0.2)"
  augmenter = augment.from_config(make_config(spec, losses=dict(label=1.0)), preprocessor)
  source = grading.source("train[:64]")

  def make(rows=None, augmenter=augmenter):
    return pipeline.train_iterator(source, preprocessor, global_batch_size=8, seed=0,
                                   num_threads=1, rows=rows, augmenter=augmenter)

  a, b = make(), make()
  first = [next(a) for _ in range(3)]
  for batch in first:
    other = next(b)
    assert set(batch) == {"image", "text_ids", "text_mask", "label", "example_mask",
                          "mix_lambda", "mix_label"}
    for key, value in batch.items():
      np.testing.assert_array_equal(value, other[key], err_msg=key)
  plain = next(make(augmenter=None))
  assert not np.allclose(first[0]["image"], plain["image"])
  assert (first[0]["text_mask"].sum(1) <= plain["text_mask"].sum(1)).all()
  assert (first[0]["text_mask"].sum() < plain["text_mask"].sum())
  # Resumed from a saved position: the same augmented batches.
  state = a.get_state()
  expected = [next(a) for _ in range(2)]
  resumed = make()
  resumed.set_state(state)
  for batch in expected:
    np.testing.assert_array_equal(next(resumed)["image"], batch["image"])
  # Two processes' halves of each global batch are the one process's batch.
  halves = [next(make(rows)) for rows in ((0, 4), (4, 8))]
  for key in ("image", "text_ids", "mix_lambda", "mix_label"):
    np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), first[0][key])
