"""Random subsets with static shapes: the original's `BalancedPositiveNegativeSampler` (SPEC §6.1).

The original draws `torch.randperm` subsets: per image, `num_pos = min(#positives,
int(batch_size_per_image * positive_fraction))` positives and `num_neg = min(#negatives,
batch_size_per_image - num_pos)` negatives, uniformly at random, then turns them into 0/1 masks
and re-extracts them with `nonzero`, so only the SETS matter (ascending order). Here a subset of
size k is the k largest of i.i.d. random 31-bit keys over the candidates (`lax.top_k`), which is
a uniform random k-subset (key ties, about one pair in 2^31, are broken by index). The PRNG
stream differs from torch's; tests inject the original's sets instead of drawing them.

Sampling is kept apart from the losses: these functions return index sets; the losses read
them (`rap_jax.modeling.losses`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def random_keys(rng: jax.Array, n: int) -> jnp.ndarray:
  """[n] int32 i.i.d. uniform keys in [0, 2^31)."""
  bits = jax.random.bits(rng, (n,), jnp.uint32)
  return (bits >> 1).astype(jnp.int32)


def random_subset(rng: jax.Array, candidates: jnp.ndarray, max_size: int,
                  size=None) -> jnp.ndarray:
  """Uniformly random subset of min(size, #candidates) of the candidates.

  Args:
    rng: PRNG key.
    candidates: [N] bool.
    max_size: static upper bound of `size`.
    size: int32 scalar (may be traced) <= max_size; default max_size.
  Returns:
    [N] bool mask of the chosen candidates.
  """
  n = candidates.shape[0]
  k = min(max_size, n)
  if k == 0:
    return jnp.zeros((n,), bool)
  keys = jnp.where(candidates, random_keys(rng, n), -1)  # non-candidates rank last
  top, idx = jax.lax.top_k(keys, k)  # [k]
  size = max_size if size is None else size
  take = (top >= 0) & (jnp.arange(k) < size)
  return jnp.zeros((n,), bool).at[idx].set(take)


def balanced_sample(rng: jax.Array, labels: jnp.ndarray, batch_size_per_image: int,
                    positive_fraction: float) -> tuple[jnp.ndarray, jnp.ndarray]:
  """One image of `BalancedPositiveNegativeSampler`.

  Args:
    rng: PRNG key of this image.
    labels: [N] int32: >= 1 positive, 0 negative, -1 ignored (invalid slots must be -1).
    batch_size_per_image: total samples (256 RPN, 512 ROI heads).
    positive_fraction: 0.5 RPN, 0.25 ROI heads.
  Returns:
    (pos_mask, neg_mask): [N] bool each, disjoint; at most int(batch * fraction) positives and
    batch_size_per_image samples in all.
  """
  num_pos_max = int(batch_size_per_image * positive_fraction)
  k_pos, k_neg = jax.random.split(rng)
  pos_mask = random_subset(k_pos, labels >= 1, num_pos_max)
  num_pos = jnp.sum(pos_mask, dtype=jnp.int32)
  neg_mask = random_subset(k_neg, labels == 0, batch_size_per_image,
                           batch_size_per_image - num_pos)
  return pos_mask, neg_mask


def mask_to_indices(mask: jnp.ndarray, size: int) -> jnp.ndarray:
  """[N] bool -> [size] int32 indices of the True entries, ascending, padded with -1."""
  (idx,) = jnp.nonzero(mask, size=size, fill_value=-1)
  return idx.astype(jnp.int32)


def indices_to_mask(idx: jnp.ndarray, n: int) -> jnp.ndarray:
  """[K] int32 indices (-1 = empty slot) -> [n] bool mask."""
  valid = idx >= 0
  return jnp.zeros((n,), bool).at[jnp.where(valid, idx, n)].set(True, mode="drop")


def balanced_sample_indices(rng: jax.Array, labels: jnp.ndarray, batch_size_per_image: int,
                            positive_fraction: float) -> jnp.ndarray:
  """`balanced_sample` as the sorted union of the chosen indices: [batch] int32, -1 padded.

  This is the order the original feeds sampled ROIs to the box head (`nonzero(pos | neg)`).
  """
  pos, neg = balanced_sample(rng, labels, batch_size_per_image, positive_fraction)
  return mask_to_indices(pos | neg, batch_size_per_image)
