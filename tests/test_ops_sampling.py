"""`rap_jax.ops.sampling`: the original's sampler counts, valid subsets, uniformity, index sets."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rap_jax.ops import sampling
from rap_jax.reference import matcher as ref


@functools.lru_cache(maxsize=None)
def _sampler(batch, frac):
  def fn(key, labels):
    pos, neg = sampling.balanced_sample(key, labels, batch, frac)
    return pos, neg, sampling.balanced_sample_indices(key, labels, batch, frac)
  return jax.jit(fn)


@pytest.mark.parametrize("num_pos,num_neg,batch,frac", [
    (500, 5000, 256, 0.5),   # both capped
    (20, 5000, 256, 0.5),    # few positives: negatives fill up to 256
    (20, 100, 256, 0.5),     # not enough of either
    (0, 30, 512, 0.25),      # no positive at all
    (300, 10, 512, 0.25),
])
def test_counts_and_validity_match_the_original_rule(num_pos, num_neg, batch, frac):
  rng = np.random.default_rng(num_pos + num_neg)
  n = 6000
  labels = np.full(n, -1, np.int32)
  perm = rng.permutation(n)
  labels[perm[:num_pos]] = rng.integers(1, 81, num_pos)
  labels[perm[num_pos:num_pos + num_neg]] = 0
  pos, neg, idx = (np.asarray(x) for x in _sampler(batch, frac)(jax.random.PRNGKey(3),
                                                                 jnp.asarray(labels)))
  want_pos, want_neg = ref.sample_counts(labels, batch, frac)
  assert pos.sum() == want_pos and neg.sum() == want_neg
  assert (labels[pos] >= 1).all() and (labels[neg] == 0).all()
  assert not (pos & neg).any()
  chosen = idx[idx >= 0]
  np.testing.assert_array_equal(chosen, np.nonzero(pos | neg)[0])  # same draw, ascending
  assert (idx[len(chosen):] == -1).all()


def test_keys_give_different_draws_and_are_deterministic():
  labels = jnp.zeros((1000,), jnp.int32)
  fn = jax.jit(lambda k: sampling.random_subset(k, labels == 0, 50))
  a, b, c = fn(jax.random.PRNGKey(0)), fn(jax.random.PRNGKey(0)), fn(jax.random.PRNGKey(1))
  assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_uniform_over_candidates():
  # 40 candidates among 100 slots, draw 10: every candidate has probability 1/4.
  cand = np.zeros(100, bool)
  cand[np.random.default_rng(0).choice(100, 40, replace=False)] = True
  keys = jax.random.split(jax.random.PRNGKey(0), 4000)
  masks = np.asarray(jax.vmap(lambda k: sampling.random_subset(k, jnp.asarray(cand), 10))(keys))
  assert (masks.sum(1) == 10).all() and not masks[:, ~cand].any()
  freq = masks[:, cand].mean(0)
  # binomial(4000, 0.25): sd 0.0068; 5 sd bound over 40 candidates
  assert np.abs(freq - 0.25).max() < 0.035, freq


def test_index_mask_round_trip():
  m = np.zeros(30, bool)
  m[[2, 5, 29]] = True
  idx = sampling.mask_to_indices(jnp.asarray(m), 8)
  np.testing.assert_array_equal(np.asarray(idx), [2, 5, 29, -1, -1, -1, -1, -1])
  np.testing.assert_array_equal(np.asarray(sampling.indices_to_mask(idx, 30)), m)
