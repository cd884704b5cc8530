"""`rap_jax.ops.matcher.match` against the numpy loop of maskrcnn-benchmark's Matcher."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rap_jax.ops import boxes as box_ops
from rap_jax.ops import matcher
from rap_jax.reference import matcher as ref


def test_hand_drawn_thresholds_and_low_quality_ties():
  #   GT 0 best matches: pred 1 (0.8) -> positive; GT 1 best is pred 3 (0.5, below 0.7) and
  #   pred 4 ties with it (0.5): both get GT 1 back through the low-quality rule.
  #          pred: 0     1     2     3     4
  q = np.array([[0.10, 0.80, 0.40, 0.20, 0.00],
                [0.20, 0.30, 0.35, 0.50, 0.50]], np.float32)
  got = np.asarray(matcher.match(jnp.asarray(q), 0.7, 0.3, True))
  np.testing.assert_array_equal(got, [-1, 0, -2, 1, 1])
  got = np.asarray(matcher.match(jnp.asarray(q), 0.7, 0.3, False))
  np.testing.assert_array_equal(got, [-1, 0, -2, -2, -2])
  got = np.asarray(matcher.match(jnp.asarray(q), 0.5, 0.5, False))
  np.testing.assert_array_equal(got, [-1, 0, -1, 1, 1])


def test_padding_slots_never_match():
  q = np.array([[0.9, 0.1, 0.0],
                [0.95, 0.99, 0.2]], np.float32)  # GT 1 is a padding slot
  got = matcher.match(jnp.asarray(q), 0.7, 0.3, True, jnp.array([True, False]),
                      jnp.array([True, True, False]))
  # pred 1 would match padded GT 1; pred 2 does not exist (never a low-quality match either)
  np.testing.assert_array_equal(np.asarray(got), [0, -1, -1])
  # An image without GT: everything is below the low threshold.
  got = matcher.match(jnp.asarray(q), 0.7, 0.3, True, jnp.array([False, False]))
  np.testing.assert_array_equal(np.asarray(got), [-1, -1, -1])


@functools.lru_cache(maxsize=None)
def _jitted(high, low, lq):
  return jax.jit(lambda a, b: matcher.match(box_ops.pairwise_iou(a, b), high, low, lq))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("high,low,lq", [(0.7, 0.3, True), (0.5, 0.5, False)])
def test_random_boxes_against_loop(seed, high, low, lq):
  rng = np.random.default_rng(seed)
  g, n = 5, 300
  def rand_boxes(k):
    xy = rng.uniform(0, 80, (k, 2)).round()  # integer corners: exact IoU ties happen
    wh = rng.uniform(4, 40, (k, 2)).round()
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)
  gt, preds = rand_boxes(g), rand_boxes(n)
  preds[:20] = np.repeat(gt[:2], 10, axis=0)  # duplicates of GT boxes: IoU 1 ties
  got = np.asarray(_jitted(high, low, lq)(gt, preds))
  q = np.asarray(box_ops.pairwise_iou(jnp.asarray(gt), jnp.asarray(preds)))
  np.testing.assert_array_equal(got, ref.match(q, high, low, lq))
  # padded: two extra GT slots and 50 extra prediction slots change nothing
  gt_p = np.concatenate([gt, rand_boxes(2)])
  pr_p = np.concatenate([preds, rand_boxes(50)])
  got_p = matcher.match(box_ops.pairwise_iou(jnp.asarray(gt_p), jnp.asarray(pr_p)), high, low,
                        lq, jnp.arange(g + 2) < g, jnp.arange(n + 50) < n)
  np.testing.assert_array_equal(np.asarray(got_p)[:n], got)
  assert (np.asarray(got_p)[n:] == -1).all()


def test_under_disable_jit():
  q = np.random.default_rng(0).uniform(0, 1, (3, 40)).astype(np.float32)
  with jax.disable_jit():
    got = np.asarray(matcher.match(jnp.asarray(q), 0.7, 0.3, True))
  np.testing.assert_array_equal(got, ref.match(q, 0.7, 0.3, True))
