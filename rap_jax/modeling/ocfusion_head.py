"""OCFusion pairwise occlusion head (SPEC §2.11), named `relation` like the RAP head.

p(A, B) = sigmoid(fc2(relu(fc1(flatten(convs(concat(f_A, f_B))))))) = probability that A occludes
B; `occlusion[i, j] = p(f_i, f_j) > 0.5` (float32 sigmoid compared with 0.5, SPEC §10.2).
Modules: `feature_extractor.relation_oc_fcn1..4` (3x3, fcn4 stride 2), `relation_oc_fc1`,
`relation_oc_fc2`. Pairs are evaluated in chunks (a scan over rows of the K x K matrix) so that
memory stays at `rows_per_step * K` pair inputs, like the original's per-row loop.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from rap_jax.modeling.layers import conv, flatten_hwc


class OcclusionFeatureExtractor(nn.Module):
  """Scanned body: (carry, pair_idx [P, 2], feats [K, 14, 14, C+1]) -> (carry, probs [P])."""
  conv_dim: int
  mlp_head_dim: int

  @nn.compact
  def __call__(self, carry, pair_idx, feats):
    x = jnp.concatenate([feats[pair_idx[:, 0]], feats[pair_idx[:, 1]]], axis=-1)
    for i in range(3):
      x = nn.relu(conv(self.conv_dim, 3, name=f"relation_oc_fcn{i + 1}")(x))
    x = nn.relu(conv(self.conv_dim, 3, 2, name="relation_oc_fcn4")(x))
    x = nn.relu(nn.Dense(self.mlp_head_dim, name="relation_oc_fc1")(flatten_hwc(x)))
    logits = nn.Dense(1, name="relation_oc_fc2")(x)[:, 0]
    return carry, jax.nn.sigmoid(logits.astype(jnp.float32))


_ScannedExtractor = nn.scan(OcclusionFeatureExtractor, variable_broadcast="params",
                            split_rngs={"params": False}, in_axes=(0, nn.broadcast),
                            out_axes=0)


class OcclusionHead(nn.Module):
  """Fields used from `config.model.roi_heads.relation`: oc_conv_dim, oc_mlp_head_dim, oc_pair_chunk."""
  oc_conv_dim: int = 512
  oc_mlp_head_dim: int = 1024
  rows_per_step: int = 8

  def setup(self):
    self.feature_extractor = _ScannedExtractor(self.oc_conv_dim, self.oc_mlp_head_dim)

  def pair_probs(self, feats, pair_idx):
    """feats [K, 14, 14, C+1]; pair_idx [S, P, 2] (first, second) -> [S, P] probabilities."""
    _, probs = self.feature_extractor(None, pair_idx, feats)
    return probs

  def __call__(self, feats):
    """feats: [N, K, 14, 14, C+1] -> probs [N, K, K]; [n, i, j] = instance i occluding j."""
    n, k = feats.shape[:2]
    r = max(1, min(self.rows_per_step, k))
    steps = -(-k // r)
    rows = jnp.minimum(jnp.arange(steps * r), k - 1).reshape(steps, r)  # padding repeats row K-1
    first = jnp.broadcast_to(rows[None, :, :, None], (n, steps, r, k))
    second = jnp.broadcast_to(jnp.arange(k)[None, None, None, :], (n, steps, r, k))
    offset = (jnp.arange(n) * k)[:, None, None, None]  # pairs never cross images
    idx = jnp.stack([first + offset, second + offset], axis=-1).reshape(n * steps, r * k, 2)
    flat = feats.reshape((n * k,) + feats.shape[2:])
    probs = self.pair_probs(flat, idx).reshape(n, steps * r, k)
    return probs[:, :k]
