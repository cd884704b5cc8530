"""The small X-101-32x8d RAP fixture (grouped 3x3 convs, stride in the 3x3, 23-block layer3).

Converted with `python -m convert ... --config configs/fixtures/rap_x101_small.py`, run on the
astronaut photo, every stored intermediate of `rap_x101_small_astronaut.npz` compared with the
tolerances of the R-50 parity test. The lowest detection is only 5.7e-4 above the 0.05 score
threshold (fixtures README); it is kept here (our score differs from the original's by < 2e-5).
"""
import numpy as np
import pytest

from configs.fixtures import rap_x101_small
from rap_jax import inference
from rap_jax.data import transforms as T
from parity_helpers import DET_SCORE_TOL, PROPOSAL_SCORE_TOL, nchw, orders, rel_err


@pytest.fixture(scope="module")
def run(fixtures_dir, rap_x101_small_ckpt):
  config = rap_x101_small.get_config()
  predictor = inference.Predictor.from_checkpoint(config, rap_x101_small_ckpt)
  item = inference.prepare_image(T.load_image(fixtures_dir / "image_astronaut.png"),
                                 config.input, "astronaut")
  batch = inference.make_batch([item], 1, (320, 320), config.postprocess.output_size_multiple)
  out = predictor(batch, intermediates=True)
  net = {k: np.asarray(v) for k, v in out["network"].items() if not isinstance(v, list)}
  final = {k: np.asarray(v) for k, v in out.items() if k not in ("network", "fusion")}
  return net, final, np.load(fixtures_dir / "rap_x101_small_astronaut.npz")


def test_config_is_resnext_101(run):
  b = rap_x101_small.get_config().model.backbone
  assert (b.depth, b.num_groups, b.width_per_group, b.stride_in_1x1) == (101, 32, 1, False)


def test_backbone_fpn_rpn(run):
  net, _, d = run
  for k in range(2, 6):
    assert rel_err(net[f"body_c{k}"][0], nchw(d[f"body_c{k}"])) < 1e-4, k
  for k in range(2, 7):
    assert rel_err(net[f"fpn_p{k}"][0], nchw(d[f"fpn_p{k}"])) < 1e-4, k
    assert rel_err(net[f"rpn_logits_p{k}"][0], nchw(d[f"rpn_objectness_logits_p{k}"])) < 1e-4, k
    assert rel_err(net[f"rpn_deltas_p{k}"][0], nchw(d[f"rpn_box_deltas_p{k}"])) < 1e-4, k


def test_proposals_and_box_head(run):
  net, _, d = run
  n = len(d["proposals_objectness"])
  assert net["proposals_valid"][0].sum() == n
  prop, _ = orders(net, d, 0)  # same order up to swaps inside score ties (parity_helpers)
  np.testing.assert_allclose(net["objectness"][0][:n][prop], d["proposals_objectness"],
                             atol=PROPOSAL_SCORE_TOL)
  np.testing.assert_allclose(net["proposals"][0][:n][prop], d["proposals_boxes"], atol=1e-3, rtol=0)
  rows = np.concatenate([prop, np.arange(n, len(net["box_class_logits"][0]))])
  assert rel_err(net["box_class_logits"][0][rows], d["box_class_logits"]) < 1e-3
  assert rel_err(net["box_regression"][0][rows], d["box_regression"]) < 1e-3


def test_detections_masks_relation_semantic(run):
  net, _, d = run
  n = len(d["det_scores"])
  assert int(net["det_num"][0]) == n == 58
  _, det = orders(net, d, 0)
  np.testing.assert_array_equal(net["det_labels"][0][:n][det], d["det_labels"])
  np.testing.assert_allclose(net["det_scores"][0][:n][det], d["det_scores"], atol=DET_SCORE_TOL,
                             rtol=0)
  np.testing.assert_allclose(net["det_boxes"][0][:n][det], d["det_boxes"], atol=1e-3, rtol=0)
  np.testing.assert_allclose(net["mask_probs"][0][:n][det], d["mask_probs"], atol=1e-4, rtol=0)
  np.testing.assert_allclose(net["relation"][0][:n][det], d["relation_val"], atol=1e-3, rtol=0)
  np.testing.assert_allclose(net["semantic_logits"][0], nchw(d["semantic_logits_quarter"]),
                             atol=1e-3, rtol=0)


def test_detections_in_original_pixels(run):
  """Boxes scaled by 512/320 = 1.6 (the astronaut photo is 512x512, resized to 320x320)."""
  _, final, d = run
  n = len(d["det_scores"])
  _, det = orders(run[0], d, 0)
  np.testing.assert_allclose(final["boxes"][0][:n][det], d["det_boxes"] * np.float32(1.6),
                             atol=2e-3)
