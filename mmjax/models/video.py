"""Video encoder: the ViT on every frame (shared weights), then time mixed by a temporal
Transformer or averaged away (`temporal`, `config.model.video.temporal`).

Clips [B, F, H, W, C] are encoded as B*F independent images by one ViT (`frame_encoder`,
the image tower's architecture: parameters `video_encoder/frame_encoder/...`), so a clip
costs F images and the per-frame weights do not grow with F. What fusion sees:

  transformer  Tokens [B, 1 + F, width]: a clip token followed by each frame's [CLS]
               token plus a temporal position embedding (`temporal_posemb`), through a
               `temporal_depth`-block Encoder (`temporal_encoder`). The clip token starts
               as a learned linear map of the F frame [CLS] tokens in time order
               (`clip_projection`, kernel [F * width, width], sized by F at init), then
               reads every frame: it can tell motion, which no single frame shows.
  mean         Tokens [B, 1 + N, width]: the frame ViT's tokens ([CLS], N patches)
               averaged over time, i.e. the clip fused like one (motion-blurred) image.
               No parameters beyond the frame ViT; order-free by construction, so it
               answers what is where in the clip but cannot tell which way anything moved
               (a baseline, and the cheapest choice for questions about content).

Which tokens reach fusion is a trade-off: the F frame [CLS] tokens keep fusion's keys (and
the temporal Transformer's quadratic cost) independent of the frame size, but each frame
must first summarise its content into its [CLS]; all F*N patch tokens would keep spatial
detail for the question to attend to, at F*N keys per clip and attention over F*N tokens
in the temporal Encoder (128 per 8-frame clip of 16 patches here, 1,568 for 8 frames of
ViT-B/16 at 224 pixels). Per-frame [CLS] tokens scale; patch averaging is the order-free
alternative.

Temporal positions: "sincos" (default) adds fixed 1-D sine-cosine embeddings of the frame
index (`sincos_1d`); "learn" a `temporal_pos_embedding` parameter [1, F, width] (normal
0.02, sized by F at init like ViT's positions).

Measured while designing this on `video_motion` (the video tower alone, width 32, heads
naming what each colour's shape does, 1,000 steps of 32 unless said). With plain linear
heads, learned positions left the clip token blind to order (direction accuracy 0.46
after 2,500 steps: each shape's axis of motion, not its sign); fixed ones reached 0.73.
With zero-initialised heads (heads.py, what every config uses) a learned [CLS] clip token
stalled: at init its query attends to all frames alike (a zero [CLS] exactly so), so it
reads the same from a clip and from the clip played backwards and nothing in it tells
left from right; with every head logit at zero the four directions' gradients are all
alike, and nothing starts telling them apart (0.28, chance 0.25). Hence the clip token is
a learned linear map of the frame tokens in time order, a function of the order from the
first step: 0.68 with the same heads.

Remat and scan (`config.model.block`) apply to both Encoders (the frame ViT's and the
temporal one) as in every tower.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.config import ConfigError
from mmjax.models.layers import BlockOptions, Dtype, Encoder, Tokens, dense
from mmjax.models.vit import ViT

TEMPORAL = ("transformer", "mean")
TEMPORAL_POSEMBS = ("sincos", "learn")


def sincos_1d(length: int, dim: int, temperature: float = 10_000.0) -> np.ndarray:
  """Fixed 1-D sine-cosine position embeddings, float32 [length, dim]: half of `dim` holds
  sin(t w), the other half cos(t w), for dim/2 frequencies w = temperature^(-i / (dim/2))."""
  if dim % 2:
    raise ConfigError(f"config.model.video.temporal_posemb: 'sincos' needs an even width, "
                      f"got {dim}")
  omega = 1.0 / temperature ** (np.arange(dim // 2) / (dim // 2))
  angles = np.arange(length)[:, None] * omega
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)


class VideoEncoder(nn.Module):
  """Clips [B, F, H, W, C] (float, normalised like images) -> Tokens: [B, 1 + F, width]
  under `temporal="transformer"`, [B, 1 + N, width] under "mean" (see the module doc).
  Every token is real (mask all True); token 0 summarises the clip.

  Attributes:
    width, depth, mlp_dim, num_heads, patch_size, posemb: the frame ViT's (`vit.ViT`).
    temporal: one of TEMPORAL.
    temporal_depth: blocks of the temporal Encoder (width, heads and MLP as the frame
      ViT's); unused under "mean".
    temporal_posemb: one of TEMPORAL_POSEMBS (see the module doc); unused under "mean".
    dropout_rate, drop_path_rate: of both Encoders (drop_path_rate: stochastic depth of
      each Encoder's last block).
  """

  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  patch_size: int
  temporal: str = "transformer"
  temporal_depth: int = 1
  temporal_posemb: str = "sincos"
  posemb: str = "learn"
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  options: BlockOptions = BlockOptions()
  drop_path_rate: float = 0.0

  def __post_init__(self):
    if self.temporal not in TEMPORAL:
      raise ConfigError(f"config.model.video.temporal: unknown '{self.temporal}'; expected "
                        f"one of {', '.join(TEMPORAL)}")
    if self.temporal_posemb not in TEMPORAL_POSEMBS:
      raise ConfigError(f"config.model.video.temporal_posemb: unknown '{self.temporal_posemb}';"
                        f" expected one of {', '.join(TEMPORAL_POSEMBS)}")
    if (isinstance(self.temporal_depth, bool) or not isinstance(self.temporal_depth, int)
        or self.temporal_depth < 1):
      raise ConfigError("config.model.video.temporal_depth: expected a positive integer, "
                        f"got {self.temporal_depth!r}")
    super().__post_init__()

  @nn.compact
  def __call__(self, video: jax.Array, *, train: bool) -> Tokens:
    if video.ndim != 5:
      raise ValueError(f"video must be [batch, frames, height, width, channels], got shape "
                       f"{video.shape}")
    batch, frames = video.shape[:2]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    frame_encoder = ViT(self.width, self.depth, self.mlp_dim, self.num_heads, self.patch_size,
                        dropout_rate=self.dropout_rate, options=self.options,
                        posemb=self.posemb, drop_path_rate=self.drop_path_rate,
                        name="frame_encoder", **kw)
    # One batch of B*F images: every frame through the same weights, in one call.
    per_frame = frame_encoder(video.reshape(batch * frames, *video.shape[2:]), train=train)
    tokens = per_frame.tokens.reshape(batch, frames, -1, self.width)  # [B, F, 1 + N, D]
    if self.temporal == "mean":
      pooled = tokens.mean(axis=1)
      return Tokens(pooled, jnp.ones(pooled.shape[:2], bool))
    if self.temporal_posemb == "learn":
      positions = self.param("temporal_pos_embedding", nn.initializers.normal(stddev=0.02),
                             (1, frames, self.width), self.param_dtype)
    else:
      positions = jnp.asarray(sincos_1d(frames, self.width))[None]
    frame_cls = tokens[:, :, 0]  # [B, F, D]
    # Token 0 starts as a linear map of the frames' [CLS] tokens in time order, not as a
    # learned [CLS] (ViT's): see the module doc.
    clip = dense(self.width, "clip_projection", **kw)(
        frame_cls.reshape(batch, frames * self.width))
    sequence = jnp.concatenate([clip[:, None], frame_cls + positions.astype(self.dtype)],
                               axis=1)
    sequence = nn.Dropout(self.dropout_rate)(sequence, deterministic=not train)
    return Encoder(self.temporal_depth, self.num_heads, self.mlp_dim,
                   dropout_rate=self.dropout_rate, options=self.options,
                   drop_path_rate=self.drop_path_rate, name="temporal_encoder", **kw)(
                       Tokens(sequence, jnp.ones(sequence.shape[:2], bool)), train=train)
