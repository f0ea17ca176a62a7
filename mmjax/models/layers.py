"""Transformer building blocks shared by every tower and fusion module.

Dtype policy: every module takes `dtype` (the compute dtype of activations and matmuls,
e.g. bfloat16) and `param_dtype` (what parameters are stored in, float32 by default).
Masks are boolean, True where a token is real.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.config import ConfigError

Dtype = Any

# No float16: it needs loss scaling, which the train step does not do.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def dtype_from_name(name: str) -> Dtype:
  try:
    return DTYPES[name]
  except KeyError:
    raise ConfigError(f"unknown dtype '{name}'; expected one of {sorted(DTYPES)}") from None


@flax.struct.dataclass
class Tokens:
  """A token sequence and its padding mask.

  Attributes:
    tokens: [batch, length, width] activations.
    mask: [batch, length] bool, True for real tokens.
  """

  tokens: jax.Array
  mask: jax.Array


# Mesh axes the batch dimension is split over (mmjax.train.sharding.BATCH_AXES).
BATCH_AXES = ("data", "fsdp")


def constrain_batch(x: jax.Array) -> jax.Array:
  """`x` [batch, ...] split over the batch axes of the mesh being traced under (the train
  and predict steps set it, `jax.sharding.use_abstract_mesh`) and whole along the other
  dimensions: where activations are pinned at block boundaries, so tensor-parallel
  blocks all-reduce their outputs there. A no-op outside a mesh (model.init, notebooks)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  axes = tuple(name for name in mesh.axis_names if name in BATCH_AXES)
  spec = jax.sharding.PartitionSpec(axes or None, *([None] * (x.ndim - 1)))
  return jax.lax.with_sharding_constraint(x, spec)


def key_padding_mask(kv_mask: jax.Array) -> jax.Array:
  """[batch, kv_len] bool -> [batch, 1, 1, kv_len], broadcastable to attention logits.

  Only keys are masked: padded query rows still attend to real keys (so no row is
  empty and nothing becomes NaN); callers ignore padded rows through the mask.
  """
  return kv_mask[:, None, None, :]


def causal_mask(length: int) -> jax.Array:
  """[1, 1, length, length] bool: query i sees keys 0..i."""
  return jnp.tril(jnp.ones((length, length), bool))[None, None]


ACTIVATIONS = {
    "gelu": lambda x: nn.gelu(x, approximate=False),  # BERT, ViT (erf form)
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),  # CLIP
    "relu": jax.nn.relu,
}
NORM_POSITIONS = ("pre", "post")
# `jax.nn.dot_product_attention(implementation=...)`: None lets XLA choose; "cudnn" is
# the fused flash kernel on NVIDIA GPUs; "xla" forces the portable version.
ATTENTION_IMPLEMENTATIONS = (None, "xla", "cudnn")
# Rematerialisation of each Transformer block (`jax.checkpoint`): what the backward pass
# keeps from the forward pass; the rest it recomputes. "none": keep everything (fastest,
# most memory); "full": keep only the block's input; "dots": keep matmul outputs;
# "dots_no_batch": keep matmuls without batch dimensions (the weight matmuls of
# projections and MLPs, not attention's query-key and probability-value products).
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def activation_from_name(name: str):
  try:
    return ACTIVATIONS[name]
  except KeyError:
    raise ConfigError(f"unknown activation '{name}'; expected one of {sorted(ACTIVATIONS)}"
                      ) from None


def dense(features: int, name: str, *, dtype: Dtype, param_dtype: Dtype, use_bias: bool = True,
          zero_init: bool = False) -> nn.Dense:
  """The one Dense every Transformer layer uses: 2-D kernels [in, out] under `<name>/kernel`,
  so LoRA rules and checkpoint converters see the same shapes everywhere."""
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                  kernel_init=(nn.initializers.zeros if zero_init
                               else nn.initializers.xavier_uniform()),
                  bias_init=nn.initializers.zeros, name=name)


class MultiHeadAttention(nn.Module):
  """Multi-head attention through `jax.nn.dot_product_attention` (cuDNN flash on GPU).

  Parameters: `query`, `key`, `value`, `out`, each a Dense with a [width, width] kernel
  (`key` without bias, see below).

  When applied with the "intermediates" collection mutable, it also sows its attention
  logits [B, heads, T, S] (float32 whatever the compute dtype; masked keys at -1e9) as
  `logits`: what attention supervision
  (`config.task.attention_targets`) reads. Under jit they cost nothing unless read.
  """

  num_heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  implementation: str | None = None

  @nn.compact
  def __call__(self, queries: jax.Array, keys_values: jax.Array,
               mask: jax.Array | None = None) -> jax.Array:
    """queries [B, T, D], keys_values [B, S, D], mask broadcastable to [B, heads, T, S]."""
    batch, length, width = queries.shape
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
    head_dim = width // self.num_heads
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    split = lambda x: x.reshape(*x.shape[:2], self.num_heads, head_dim)  # noqa: E731
    query = split(dense(width, "query", **kw)(queries))
    # No key bias: it adds the same q.b to every logit of a query row, which softmax
    # ignores, so its gradient is exactly zero and Adam would only amplify rounding
    # noise into it. Checkpoints that have one (BERT, ViT, CLIP) load without it, exactly.
    key = split(dense(width, "key", use_bias=False, **kw)(keys_values))
    value = split(dense(width, "value", **kw)(keys_values))
    if self.is_mutable_collection("intermediates"):
      logits = jnp.einsum("btnh,bsnh->bnts", query, key,
                          preferred_element_type=jnp.float32) / np.sqrt(head_dim)
      if mask is not None:
        logits = jnp.where(mask, logits, -1e9)
      self.sow("intermediates", "logits", logits)
    attended = jax.nn.dot_product_attention(query, key, value, mask=mask,
                                            implementation=self.implementation)  # [B, T, N, H]
    return dense(width, "out", **kw)(attended.reshape(batch, length, width))


class MlpBlock(nn.Module):
  """Dense -> activation -> dropout -> Dense, back to the input width."""

  mlp_dim: int
  dropout_rate: float = 0.0
  activation: str = "gelu_tanh"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    width = x.shape[-1]
    x = activation_from_name(self.activation)(dense(self.mlp_dim, "fc1", **kw)(x))
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    return dense(width, "fc2", **kw)(x)


class Adapter(nn.Module):
  """Bottleneck adapter (Houlsby et al. 2019): x + up(gelu(down(x))), `up` zero-initialised,
  so inserting adapters into a trained network leaves its outputs unchanged."""

  bottleneck: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    hidden = nn.gelu(dense(self.bottleneck, "down", **kw)(x))
    return x + dense(x.shape[-1], "up", zero_init=True, **kw)(hidden)


def drop_path(x: jax.Array, rate: float | jax.Array, rng: jax.Array) -> jax.Array:
  """Stochastic depth (Huang et al. 2016) on a residual branch `x` [B, ...]: each example's
  branch is zeroed with probability `rate` and otherwise scaled by 1 / (1 - rate), so its
  expectation is `x`. `rate` in [0, 1) is a float or a traced scalar (the per-layer rate of
  a scanned stack)."""
  keep_prob = 1.0 - rate
  keep = jax.random.bernoulli(rng, keep_prob, (x.shape[0],) + (1,) * (x.ndim - 1))
  return x * (keep / keep_prob).astype(x.dtype)


def drop_path_rates(rate: float, depth: int) -> list[float]:
  """The linear stochastic-depth schedule: block i (0-based) of `depth` drops its branches
  with probability rate * (i + 1) / depth, so the last block's rate is `rate` and the
  blocks nearest the input, whose features everything above reads, are dropped least."""
  return [rate * (i + 1) / depth for i in range(depth)]


def check_rate(field: str, rate: float) -> None:
  """ConfigError unless `rate` (a dropout or drop-path probability) is in [0, 1)."""
  if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
    raise ConfigError(f"{field}: expected a rate in [0, 1), got {rate!r}")


# The flax collection adversarial training (mmjax/train/adversarial.py) adds its input
# perturbations through; towers name their point `PERTURBATION_POINT`.
PERTURBATIONS = "perturbations"
PERTURBATION_POINT = "embeddings"


def perturbation_point(module: nn.Module, x: jax.Array, name: str = PERTURBATION_POINT
                       ) -> jax.Array:
  """`x` plus the `perturbations` variable `name` of `module` (`Module.perturb`) when the
  apply call passes that collection or makes it mutable (what adversarial training does to
  find its shapes, then to add its perturbation and take gradients through it); `x` itself
  otherwise. Nothing is created at `init`, so parameters and every other apply are unchanged.
  Call from a compact method."""
  if module.is_initializing():
    return x
  if module.is_mutable_collection(PERTURBATIONS) or module.has_variable(PERTURBATIONS, name):
    return module.perturb(name, x, collection=PERTURBATIONS)
  return x


@dataclasses.dataclass(frozen=True)
class BlockOptions:
  """How a Transformer block is wired; the defaults are mmjax's own (pre-norm) choice.

  Attributes:
    norm_position: "pre" (ViT, CLIP, GPT-2) or "post" (original BERT).
    activation: MLP activation, one of ACTIVATIONS.
    layer_norm_eps: LayerNorm epsilon (BERT/ViT 1e-12, CLIP 1e-5).
    adapter_dim: bottleneck width of adapters after attention and MLP; 0 = none.
    causal: self-attention sees only earlier positions (decoders, CLIP text).
    attention_implementation: one of ATTENTION_IMPLEMENTATIONS.
    remat: one of REMAT_POLICIES: how blocks trade compute for activation memory.
      Parameters, outputs and gradients are the same under every policy.
    scan: an Encoder's blocks run as one `nn.scan` over a stacked layer axis: one
      block is compiled instead of `depth`, so compilation time stops growing with
      depth. The parameters become `scanned_blocks/block/...` with a leading [depth]
      axis (instead of `block_<i>/...`), which pretrained converters, LoRA and attention
      supervision do not read; dropout draws other masks than the unrolled stack.
  """

  norm_position: str = "pre"
  activation: str = "gelu_tanh"
  layer_norm_eps: float = 1e-6
  adapter_dim: int = 0
  causal: bool = False
  attention_implementation: str | None = None
  remat: str = "none"
  scan: bool = False

  def __post_init__(self):
    if self.norm_position not in NORM_POSITIONS:
      raise ConfigError(f"unknown norm_position '{self.norm_position}'; expected one of "
                        f"{', '.join(NORM_POSITIONS)}")
    activation_from_name(self.activation)
    if self.attention_implementation not in ATTENTION_IMPLEMENTATIONS:
      raise ConfigError(f"unknown attention implementation '{self.attention_implementation}';"
                        f" expected one of {ATTENTION_IMPLEMENTATIONS}")
    if not isinstance(self.scan, bool):
      raise ConfigError(f"config.model.block.scan: expected True or False, got {self.scan!r}")
    if self.remat not in REMAT_POLICIES:
      raise ConfigError(f"config.model.block.remat: unknown policy '{self.remat}'; expected "
                        f"one of {', '.join(REMAT_POLICIES)}")


class TransformerBlock(nn.Module):
  """Self-attention, optional cross-attention to a context, MLP; pre- or post-norm.

  With `cross_attention=False` this is a plain encoder block (ViT/BERT style);
  with True it is the ALBEF/decoder-style block whose queries also read a second
  token sequence. Sub-layer names: `self_attention`, `cross_attention`, `mlp`, their
  norms `norm_self`, `norm_cross`, `norm_mlp`, adapters `adapter_self`, `adapter_cross`,
  `adapter_mlp`.

  `drop_path_rate` > 0: in training, each residual branch (attention, cross-attention,
  MLP, adapter included) is dropped per example with that probability (`drop_path`, an
  independent draw per branch from the "dropout" rng); at evaluation the block is
  unchanged.
  """

  num_heads: int
  mlp_dim: int
  cross_attention: bool = False
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  options: BlockOptions = BlockOptions()
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, x: Tokens, context: Tokens | None = None,
               train: bool | None = None, drop_path_scale: jax.Array | None = None) -> Tokens:
    """`train` may be passed by position (`block_class`'s remat needs it static);
    `drop_path_scale`, a traced scalar, multiplies `drop_path_rate` (a scanned stack's
    per-layer schedule: one module, a rate per layer)."""
    if train is None:
      raise TypeError("TransformerBlock needs train=True or False")
    opts = self.options
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    dropout = lambda y: nn.Dropout(self.dropout_rate)(y, deterministic=not train)  # noqa: E731
    norm = lambda name: nn.LayerNorm(epsilon=opts.layer_norm_eps, name=name, **kw)  # noqa: E731

    def drop_branch(update):
      if not train or not self.drop_path_rate:  # off: not a single op or rng draw more
        return update
      rate = self.drop_path_rate
      if drop_path_scale is not None:
        rate = rate * drop_path_scale
      return drop_path(update, rate, self.make_rng("dropout"))

    def sublayer(tokens, name, fn):
      """Residual around fn, LayerNorm before (pre) or after (post), adapter on fn's output."""
      inputs = norm(f"norm_{name}")(tokens) if opts.norm_position == "pre" else tokens
      update = dropout(fn(inputs))
      if opts.adapter_dim:
        update = Adapter(opts.adapter_dim, name=f"adapter_{name}", **kw)(update)
      tokens = tokens + drop_branch(update)
      return norm(f"norm_{name}")(tokens) if opts.norm_position == "post" else tokens

    mask = key_padding_mask(x.mask)
    if opts.causal:
      mask = mask & causal_mask(x.tokens.shape[1])
    attention = lambda name: MultiHeadAttention(  # noqa: E731
        self.num_heads, implementation=opts.attention_implementation, name=name, **kw)
    tokens = sublayer(x.tokens, "self", lambda h: attention("self_attention")(h, h, mask))
    if self.cross_attention:
      if context is None:
        raise ValueError("a cross-attention block needs a context sequence")
      tokens = sublayer(tokens, "cross", lambda h: attention("cross_attention")(
          h, context.tokens.astype(self.dtype), key_padding_mask(context.mask)))
    tokens = sublayer(tokens, "mlp", lambda h: MlpBlock(
        self.mlp_dim, self.dropout_rate, opts.activation, name="mlp", **kw)(h, train=train))
    return Tokens(constrain_batch(tokens), x.mask)


def block_class(options: BlockOptions) -> type[TransformerBlock]:
  """TransformerBlock, wrapped in `nn.remat` with `options.remat`'s policy unless "none"
  (same parameters; call it with `train` by position)."""
  policy = REMAT_POLICIES[options.remat]
  if options.remat == "none":
    return TransformerBlock
  return nn.remat(TransformerBlock, policy=policy, static_argnums=(3,))


class _ScannedBlock(nn.Module):
  """One layer of a scanned stack: (tokens, context, this layer's drop-path scale) ->
  (tokens, None) for `nn.scan`."""

  block: Any
  args: tuple
  train: bool

  @nn.compact
  def __call__(self, x: Tokens, context: Tokens | None, drop_path_scale: jax.Array
               ) -> tuple[Tokens, None]:
    return self.block(*self.args, name="block")(x, context, self.train, drop_path_scale), None


class Encoder(nn.Module):
  """A stack of `depth` TransformerBlocks, then a final LayerNorm `norm_out` (pre-norm
  stacks need it; post-norm stacks like BERT end normalised and set final_norm=False).

  `drop_path_rate` is the stochastic-depth rate of the last block; the blocks below get
  the linear schedule of `drop_path_rates` (also under `options.scan`, where the one
  scanned block reads its layer's share of the rate as a scanned input).
  """

  depth: int
  num_heads: int
  mlp_dim: int
  cross_attention: bool = False
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  options: BlockOptions = BlockOptions()
  final_norm: bool = True
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, x: Tokens, context: Tokens | None = None, *, train: bool) -> Tokens:
    check_rate("drop_path_rate", self.drop_path_rate)
    block = block_class(self.options)
    args = (self.num_heads, self.mlp_dim, self.cross_attention, self.dropout_rate,
            self.dtype, self.param_dtype, self.options)
    rates = drop_path_rates(self.drop_path_rate, self.depth)
    if self.options.scan and self.depth:
      scanned = nn.scan(_ScannedBlock, variable_axes={"params": 0, "intermediates": 0},
                        split_rngs={"params": True, "dropout": True},
                        in_axes=(nn.broadcast, 0), length=self.depth)
      # Layer i's rate is drop_path_rate * (i + 1) / depth, as unrolled.
      scales = jnp.arange(1, self.depth + 1, dtype=jnp.float32) / self.depth
      x, _ = scanned(block, (*args, self.drop_path_rate), train, name="scanned_blocks")(
          x, context, scales)
    else:
      for i in range(self.depth):
        x = block(*args, rates[i], name=f"block_{i}")(x, context, train)
    if not self.final_norm:
      return x
    tokens = nn.LayerNorm(epsilon=self.options.layer_norm_eps, dtype=self.dtype,
                          param_dtype=self.param_dtype, name="norm_out")(x.tokens)
    return Tokens(tokens, x.mask)


def embed_tokens(module: nn.Module, token_ids: jax.Array, *, vocab_size: int, width: int,
                 max_len: int, dtype: Dtype, param_dtype: Dtype) -> tuple[jax.Array, nn.Embed]:
  """Token plus learned absolute position embeddings, [B, T] ids -> [B, T, width].

  Call from a compact method: the parameters `token_embedding/embedding` and
  `pos_embedding` [1, max_len, width] belong to `module`. Also returns the Embed, whose
  `attend` gives tied output logits.
  """
  length = token_ids.shape[1]
  if length > max_len:
    raise ValueError(f"input length {length} exceeds max_len {max_len}")
  embed = nn.Embed(vocab_size, width, embedding_init=nn.initializers.normal(0.02),
                   dtype=dtype, param_dtype=param_dtype, name="token_embedding")
  pos = module.param("pos_embedding", nn.initializers.normal(stddev=0.02), (1, max_len, width),
                     param_dtype)
  return embed(token_ids) + pos[:, :length].astype(dtype), embed


POSEMBS = ("learn", "sincos2d")


def sincos_2d(height: int, width: int, dim: int, temperature: float = 10_000.0) -> np.ndarray:
  """Fixed 2-D sine-cosine position embeddings, float32 [height * width, dim], row-major.

  A quarter of `dim` each holds sin(y w), cos(y w), sin(x w), cos(x w) for the dim/4
  frequencies w = temperature^(-i / (dim/4)), i = 0 .. dim/4 - 1 (geometric, from 1
  down). The dot product of two positions' embeddings is a sum of cos(w dy) + cos(w dx):
  it falls with distance from the start of training."""
  if dim % 4:
    raise ConfigError(f"posemb 'sincos2d' needs a width divisible by 4, got {dim}")
  omega = 1.0 / temperature ** (np.arange(dim // 4) / (dim // 4))
  y, x = np.mgrid[:height, :width]
  y = y.reshape(-1, 1) * omega
  x = x.reshape(-1, 1) * omega
  return np.concatenate([np.sin(y), np.cos(y), np.sin(x), np.cos(x)], axis=1).astype(np.float32)


def prepend_cls_add_positions(module: nn.Module, patches: jax.Array, *, dtype: Dtype,
                              param_dtype: Dtype, posemb: str = "learn",
                              grid: tuple[int, int] | None = None) -> jax.Array:
  """Patch tokens [B, N, D] -> [B, 1 + N, D]: a learned [CLS] token (`cls`, zeros) first,
  then position embeddings added; parameters belong to `module` (call from a compact
  method). `posemb` "learn": `pos_embedding` [1, 1 + N, D], normal(0.02); "sincos2d":
  fixed `sincos_2d` of the patches' `grid` (rows, columns), none on [CLS]."""
  batch, num_patches, width = patches.shape
  cls = module.param("cls", nn.initializers.zeros, (1, 1, width), param_dtype)
  tokens = jnp.concatenate([jnp.tile(cls.astype(dtype), (batch, 1, 1)), patches.astype(dtype)],
                           axis=1)
  if posemb == "learn":
    pos = module.param("pos_embedding", nn.initializers.normal(stddev=0.02),
                       (1, tokens.shape[1], width), param_dtype)
  elif posemb == "sincos2d":
    if grid is None or grid[0] * grid[1] != num_patches:
      raise ValueError(f"sincos2d position embeddings: grid {grid} does not hold "
                       f"{num_patches} patches")
    pos = np.concatenate([np.zeros((1, width), np.float32), sincos_2d(*grid, width)])[None]
  else:
    raise ConfigError(f"posemb: unknown position embedding '{posemb}'; expected one of "
                      f"{', '.join(POSEMBS)}")
  return tokens + jnp.asarray(pos).astype(dtype)


def resolve_size(variant: str, variants: dict[str, dict[str, int]],
                 overrides: dict[str, Any]) -> dict[str, int]:
  """Width/depth/mlp_dim/num_heads of a named size, with non-None overrides applied."""
  if variant not in variants:
    raise ConfigError(f"unknown model size '{variant}'; expected one of {', '.join(variants)}")
  size = dict(variants[variant])
  size.update({k: v for k, v in overrides.items() if k in size and v is not None})
  return size
