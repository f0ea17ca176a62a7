"""The video tower (per-frame ViT + temporal Transformer or mean), the `video_motion`
dataset (labels against the rendered motion, determinism, what one frame tells), the
`video` batch role, and the runlocal video-QA config end to end."""

from __future__ import annotations

import functools
import json
import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmjax.config import ConfigError
from mmjax.data.builders.video_motion import clips
from mmjax.models import model as model_lib
from mmjax.models.layers import BlockOptions
from mmjax.models.video import VideoEncoder, sincos_1d
from mmjax.models.vit import ViT

from conftest import load_config

TINY = dict(width=16, depth=1, mlp_dim=32, num_heads=2, patch_size=8)
VIDEO = jax.random.uniform(jax.random.key(1), (2, 3, 16, 16, 3), minval=-1.0, maxval=1.0)


@functools.partial(jax.jit, static_argnums=0)
def apply(module, params, video):
  """`module`'s Tokens for `video`: one compilation per module and shapes (modules hash by
  their fields), much cheaper than op-by-op dispatch of a ViT the first time."""
  return module.apply({"params": params}, video, train=False)


def random_params(module, seed=0):
  """Parameters of `module` shaped by `jax.eval_shape` of its init and drawn in numpy: the
  tests check structure (weight sharing, what sees frame order), which any weights show,
  and skip compiling an init."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda leaf: rng.normal(0.0, 0.3, leaf.shape).astype(np.float32),
                      shapes(module)[0])


def shapes(encoder):
  """(params, Tokens) as shapes, traced without compiling (`jax.eval_shape`)."""
  out, variables = jax.eval_shape(
      lambda: encoder.init_with_output(jax.random.key(0), VIDEO, train=False))
  return variables["params"], out


def test_shapes_and_parameters_of_both_temporal_choices():
  params, out = shapes(VideoEncoder(**TINY, temporal="transformer", temporal_depth=2))
  assert out.tokens.shape == (2, 1 + 3, 16) and out.mask.shape == (2, 4)
  assert set(params) == {"frame_encoder", "temporal_encoder", "clip_projection"}
  assert params["clip_projection"]["kernel"].shape == (3 * 16, 16)  # frames in order
  assert set(params["temporal_encoder"]) == {"block_0", "block_1", "norm_out"}
  params, _ = shapes(VideoEncoder(**TINY, temporal_posemb="learn"))
  assert params["temporal_pos_embedding"].shape == (1, 3, 16)
  params, out = shapes(VideoEncoder(**TINY, temporal="mean"))
  assert out.tokens.shape == (2, 1 + (16 // 8) ** 2, 16)
  assert set(params) == {"frame_encoder"}  # averaging adds no parameters
  params, out = shapes(VideoEncoder(**TINY, options=BlockOptions(scan=True)))
  assert out.tokens.shape == (2, 1 + 3, 16)
  assert params["temporal_encoder"]["scanned_blocks"]["block"]["mlp"]["fc1"]["kernel"].shape \
      == (1, 16, 32)  # [depth, in, out]
  assert "scanned_blocks" in params["frame_encoder"]["encoder"]


def test_frames_share_the_vit_and_mean_is_their_average():
  """Mean: exactly the time-average of the frame ViT applied to each frame on its own with
  the tower's one set of frame weights; so it is blind to frame order."""
  encoder = VideoEncoder(**TINY, temporal="mean")
  params = random_params(encoder)
  out = apply(encoder, params, VIDEO)
  assert out.mask.all()
  frames = [apply(ViT(**TINY), params["frame_encoder"], VIDEO[:, t]).tokens
            for t in range(VIDEO.shape[1])]
  np.testing.assert_allclose(out.tokens, np.mean(frames, axis=0), atol=1e-5)
  np.testing.assert_allclose(apply(encoder, params, VIDEO[:, ::-1]).tokens, out.tokens,
                             atol=1e-5)


def test_sincos_1d_values():
  table = sincos_1d(5, 8)
  omega = 1e4 ** -(np.arange(4) / 4)  # 1, 0.1, 0.01, 0.001
  np.testing.assert_allclose(table[3], np.concatenate([np.sin(3 * omega), np.cos(3 * omega)]),
                             atol=1e-6)
  assert table.shape == (5, 8) and (table[0] == [0, 0, 0, 0, 1, 1, 1, 1]).all()


def test_positions_and_clip_projection_are_what_make_the_transformer_see_order():
  order = np.array([2, 0, 1])
  encoder = VideoEncoder(**TINY, temporal_posemb="learn")
  params = random_params(encoder)
  zero = lambda name: {name: jax.tree.map(np.zeros_like, params[name])}  # noqa: E731
  # Without temporal positions and with a zero clip projection the temporal Encoder is
  # permutation-equivariant: the clip token is unchanged, each frame's token moves with it.
  blind = {**params, **zero("temporal_pos_embedding"), **zero("clip_projection")}
  out, permuted = apply(encoder, blind, VIDEO), apply(encoder, blind, VIDEO[:, order])
  np.testing.assert_allclose(permuted.tokens[:, 0], out.tokens[:, 0], atol=1e-5)
  np.testing.assert_allclose(permuted.tokens[:, 1:], out.tokens[:, 1 + order], atol=1e-5)
  # Either one alone makes the clip token depend on the order of the frames.
  for sighted in ({**params, **zero("clip_projection")},
                  {**params, **zero("temporal_pos_embedding")}):
    out, permuted = apply(encoder, sighted, VIDEO), apply(encoder, sighted, VIDEO[:, order])
    assert np.abs(permuted.tokens[:, 0] - out.tokens[:, 0]).max() > 1e-3


def test_remat_wraps_both_encoders_and_keeps_the_outputs():
  encoder = VideoEncoder(**TINY)
  remat = encoder.clone(options=BlockOptions(remat="full"))
  params = random_params(encoder)
  jaxpr = str(jax.make_jaxpr(lambda p: remat.apply({"params": p}, VIDEO, train=False))(params))
  assert jaxpr.count("remat") == 2  # the frame ViT's block and the temporal block
  np.testing.assert_allclose(apply(remat, params, VIDEO).tokens,
                             apply(encoder, params, VIDEO).tokens, atol=1e-6)


def video_model_config(**video):
  return ml_collections.ConfigDict(dict(
      dtype="float32", param_dtype="float32", dropout_rate=0.0,
      video=dict(variant="nano/8", width=16, num_heads=2, mlp_dim=32, **video),
      text=dict(variant="nano", width=16, num_heads=2, mlp_dim=32, max_len=8),
      fusion=dict(kind="cross_attention", width=16, depth=1, num_heads=2, mlp_dim=32),
      heads=dict(answer=dict(input="fused", pooling="cls"),
                 motion=dict(input="video", pooling="cls"))))


def test_video_tower_plugs_into_the_model_and_config_errors_name_the_field():
  config = video_model_config(temporal="transformer")
  specs = model_lib.head_specs(config, ("video", "text"), lambda name: 4)
  model = model_lib.build_model(config, modalities=("video", "text"), vocab_size=30,
                                heads=specs)
  batch = dict(video=VIDEO, text_ids=jnp.array([[2, 5, 6, 3], [2, 7, 3, 0]]),
               text_mask=jnp.array([[1, 1, 1, 1], [1, 1, 1, 0]], bool))
  outputs, variables = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), batch))
  assert "frame_encoder" in variables["params"]["video_encoder"]
  assert outputs["answer"].shape == outputs["motion"].shape == (2, 4)
  for bad, field in ((dict(temporal="lstm"), "config.model.video.temporal"),
                     (dict(temporal_depth=0), "config.model.video.temporal_depth"),
                     (dict(temporal_posemb="rope"), "config.model.video.temporal_posemb"),
                     (dict(frames=8), "config.model.video")):
    with pytest.raises(ConfigError, match=re.escape(f"{field}: ")):
      model_lib.build_towers(video_model_config(**bad), ("video",), None,
                             model_lib.module_kwargs(video_model_config(**bad)))


@pytest.fixture(scope="module")
def split():
  return clips.make_split(120, seed=7)


def centroids(video: np.ndarray, colour: int) -> np.ndarray:
  """[frames, 2] (row, column) centroid of the pixels of `colour` in each frame."""
  hits = (video == clips.COLOUR_RGB[colour]).all(axis=-1)  # [frames, H, W]
  assert hits.any(axis=(1, 2)).all()
  return np.array([np.argwhere(frame).mean(axis=0) for frame in hits])


def test_labels_match_the_rendered_motion(split):
  assert split["video"].shape == (120, 8, 32, 32, 3) and split["video"].dtype == np.uint8
  for i in range(120):
    video, colour = split["video"][i], split["colour"][i]
    steps = np.diff(centroids(video, colour), axis=0)  # [frames - 1, 2]
    speed = clips.SPEEDS[split["speed"][i]]
    # The asked object's pixels move rigidly, `speed` pixels a frame the labelled way.
    np.testing.assert_allclose(steps, np.tile(speed * clips.STEPS[split["direction"][i]],
                                              (7, 1)), atol=1e-9)
    others = [c for c in range(len(clips.COLOURS)) if c != colour
              and (video[0] == clips.COLOUR_RGB[c]).all(axis=-1).any()]
    assert len(others) == 1  # two objects, distinct colours
    other_step = np.diff(centroids(video, others[0]), axis=0)[0]
    other_direction = int(np.argmax(clips.STEPS @ np.sign(other_step)))
    assert other_direction != split["direction"][i]
    kind, answer = clips.QUESTION_TYPES[split["question_type"][i]], clips.ANSWERS[
        split["answer"][i]]
    named = clips.DIRECTIONS[split["named_direction"][i]]
    if kind == "direction":
      assert answer == named == clips.DIRECTIONS[split["direction"][i]]
    elif kind == "yes_no":
      assert answer == ("yes" if named == clips.DIRECTIONS[split["direction"][i]] else "no")
    else:  # the one object moving the named way is the asked one
      assert named == clips.DIRECTIONS[split["direction"][i]]
      assert answer == clips.COLOURS[colour]
    assert clips.COLOURS[colour] in split["clip"][i] and split["question"][i].endswith(
        ("?", "."))
  assert np.bincount(split["question_type"]).tolist() == [40, 40, 40]
  answers = np.array(clips.ANSWERS)[split["answer"]]
  yes_no = answers[split["question_type"] == 1]
  assert 10 <= (yes_no == "yes").sum() <= 30  # about half


def test_generation_is_deterministic_and_splits_exclude_each_other(split):
  again = clips.make_split(120, seed=7)
  for name in split:
    np.testing.assert_array_equal(np.asarray(split[name]), np.asarray(again[name]))
  assert not np.array_equal(clips.make_split(120, seed=8)["video"], split["video"])
  seen = set()
  first = clips.make_split(50, seed=3, exclude=seen)
  second = clips.make_split(50, seed=3, exclude=seen)  # same draws, all excluded: new clips
  assert len(seen) == 100 and not set(first["clip"]) & set(second["clip"])


def test_one_frame_tells_the_direction_far_less_often_than_the_clip():
  """The best guess from one frame's position (`single_frame_accuracy`: 0.44 at the ends,
  0.38 mid-clip; chance 0.25) agrees with that rule applied to sampled clips."""
  assert clips.single_frame_accuracy(0) == pytest.approx(0.4403, abs=1e-4)
  assert max(map(clips.single_frame_accuracy, range(8))) < 0.45
  rng = np.random.default_rng(0)
  guess = clips.position_given_direction(0).argmax(axis=0)
  right = []
  for _ in range(1500):
    clip = clips.sample_clip(rng)
    right += [guess[tuple(clip.start[i])] == clip.direction[i] for i in range(2)]
  assert np.mean(right) == pytest.approx(clips.single_frame_accuracy(0), abs=0.04)


def test_video_batches_split_over_devices_along_the_batch_only():
  from mmjax.train import sharding as sharding_lib

  mesh = sharding_lib.make_mesh((("data", -1),))  # the 8 test devices
  video = np.arange(8 * 3 * 4 * 4 * 3, dtype=np.float32).reshape(8, 3, 4, 4, 3)
  placed = sharding_lib.global_batch({"video": video}, sharding_lib.batch_sharding(mesh))
  shards = placed["video"].addressable_shards
  assert len(shards) == 8 and {shard.data.shape for shard in shards} == {(1, 3, 4, 4, 3)}
  for shard in shards:  # each device holds whole clips
    np.testing.assert_array_equal(shard.data, video[shard.index])
  np.testing.assert_array_equal(np.asarray(placed["video"]), video)


def test_runlocal_video_qa_trains_and_reports_per_type(data_dir, tmp_path):
  from mmjax import export
  from mmjax.train import loop

  config = load_config("configs/edu/video_qa.py", "runlocal", **{"data.data_dir": data_dir,
                                                                 "evals.splits": ("test",)})
  exp = loop.build_experiment(config)
  batch = exp.example_batch()
  assert exp.preprocessor.batch_keys[:3] == ("text_ids", "text_mask", "video")
  assert batch["video"].shape == (1, 8, 32, 32, 3) and batch["video"].dtype == np.float32
  raw = exp.dataset.source("train")[0]["video"]
  np.testing.assert_allclose(batch["video"][0], raw / 127.5 - 1.0, atol=1e-6)

  workdir = str(tmp_path / "run")
  # One device: compiling for the 8 test devices costs a third more, and the sharding of
  # video batches over them is tested above.
  loop.train(config, workdir, devices=jax.devices()[:1])
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    losses = [r["train/loss"] for r in map(json.loads, f) if "train/loss" in r]
  assert len(losses) == 3 and losses[-1] < losses[0], losses
  with open(os.path.join(workdir, "eval.json")) as f:
    test = json.load(f)["test"]
  assert test["num_examples"] == 900
  by_type = [test[f"accuracy/{name}"] for name in clips.QUESTION_TYPES]
  assert test["accuracy"] == pytest.approx(np.mean(by_type))  # 300 questions of each type
  with pytest.raises(ConfigError, match="mmjax export: video inputs are not supported"):
    export.export(workdir)
