import jax.numpy as jnp

from mmjax.train.param_rules import match_rules, param_paths, weight_decay_mask

PARAMS = {
    "text_encoder": {
        "token_embedding": {"embedding": jnp.zeros((5, 2))},
        "pos_embedding": jnp.zeros((1, 4, 2)),
        "encoder": {"block_0": {"mlp": {"fc1": {"kernel": jnp.zeros((2, 3)),
                                                "bias": jnp.zeros(3)}},
                                "norm_self": {"scale": jnp.ones(2), "bias": jnp.zeros(2)}}},
    },
    "image_encoder": {"cls": jnp.zeros((1, 1, 2)),
                      "patch_embedding": {"kernel": jnp.zeros((2, 2, 1, 2))}},
}


def test_paths():
  paths = param_paths(PARAMS)
  assert paths["text_encoder"]["encoder"]["block_0"]["mlp"]["fc1"]["kernel"] == \
      "text_encoder/encoder/block_0/mlp/fc1/kernel"


def test_weight_decay_mask_only_kernels():
  mask = weight_decay_mask(PARAMS, [".*/kernel"])
  text = mask["text_encoder"]
  assert text["encoder"]["block_0"]["mlp"]["fc1"]["kernel"] is True
  assert text["encoder"]["block_0"]["mlp"]["fc1"]["bias"] is False
  assert text["encoder"]["block_0"]["norm_self"]["scale"] is False
  assert text["token_embedding"]["embedding"] is False
  assert text["pos_embedding"] is False
  assert mask["image_encoder"]["cls"] is False
  assert mask["image_encoder"]["patch_embedding"]["kernel"] is True


def test_first_matching_rule_wins():
  values = match_rules(PARAMS, [("image_encoder/.*", "frozen"), (".*/kernel", "decay")],
                       default="plain")
  assert values["image_encoder"]["patch_embedding"]["kernel"] == "frozen"
  assert values["text_encoder"]["encoder"]["block_0"]["mlp"]["fc1"]["kernel"] == "decay"
  assert values["text_encoder"]["pos_embedding"] == "plain"
