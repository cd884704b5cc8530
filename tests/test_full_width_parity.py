"""Full-width parity: the full-size R-50 RAP model (256-channel FPN, 1024-d box MLP,
2048-channel C5) at the real test size 800/1333 against the ORIGINAL code's outputs on the two
fixture photos.

Weights: `full_width_recipe.py` (NumPy, seeded), written as a .pth with torch and converted with
`python -m convert` like a real checkpoint; the original ran the same tensors
(`tests/data/make_full_width_r50_rap.py` -> `tests/data/full_width_r50_rap.npz`, 290 kB: sampled
entries and whole-tensor statistics of every stage, all proposals and detections). Both photos run
in ONE batch on an 800x1216 canvas (the original ran each alone at its own padded size: astronaut
800x800, coffee 800x1216), so this also covers canvas independence at full width.

Tolerances are those of `test_model_parity.py` except box coordinates and mask probabilities.
Proposals and detections are compared to 5e-3 px (1e-3 for the small model): at full width the RPN
deltas carry ~5e-6 relative noise between CPU kernels; decoded through exp() on boxes up to 800 px
that is ~1.2e-3 px (measured max 1.22e-3 on astronaut). Mask probabilities to 2.5e-4 (see the test).
Proposal order is exact except inside score ties (`tie_aware_order`: 15 swaps on astronaut, 22 on
coffee, all between proposals whose objectness differ by < 3.4e-6).

Issue 16 item 3 ("misses 11 of 100 of the original's detections near the right/bottom border"): not
a bug, a tie chain of the weight recipe used then (`shared/tools/original/time_original.py`, RPN
`cls_logits` ~ N(0, 0.5^2), the 32-channel fixture model's value, not rescaled for 256 channels as
its `relation_val` std was: 0.177 = 0.5/sqrt(8)). At 256 channels its P3 objectness logits reach 21
(99th percentile 15.9), in the bottom-right of the astronaut photo (P3 rows 35-95, cols 39-99 of
100): 126 P3 anchors have sigmoid exactly 1.0f, the top 1000 P3 anchors hold only 6 distinct float32
values and the 1000th value (0.9999994) is shared by 80 anchors; only 720 distinct objectness values
remain among the 1000 proposals. Which of these tied anchors survive top-k and NMS is the tie order
of torch's CPU `topk` and of the `sort` inside the NMS kernel: the ORIGINAL code itself, re-run on
its own logits with either made stable (ties by index, as here), changes 84-91 of its 1000 astronaut
proposals (62-79 on coffee). With the ORIGINAL's proposals fed to our ROI heads, all 100 astronaut
detections (the 11 included) and all 58 coffee detections agree (labels, order; scores within
2.3e-5, boxes 1.2e-4 px, relation values 1.5e-4); and the original's RPN post-processing run on its
own logits with our sigmoid values and index-ordered ties gives the 1000 proposals our RPN gives on
those logits, in the same order (boxes within 1.2e-4 px). Body C2-C5, FPN P2-P6 and RPN
logits/deltas agree to 5.2e-6 relative on both photos; the first tensor that differs beyond float32
noise is the proposal set, and only through ties. The recipe here scales every layer by its fan-in
(RPN logits below 1.8, 999 distinct objectness values among 1000 proposals), so the comparison below
is decided by the model, not by tie order.
"""
import contextlib
import io
import json
import pathlib

import numpy as np
import pytest

import full_width_recipe as recipe
from configs import rap_r50
from parity_helpers import DET_SCORE_TOL, PROPOSAL_SCORE_TOL, tie_aware_order
from rap_jax import inference
from rap_jax.data import transforms as T
from rap_jax.modeling.anchors import all_cell_anchors

# torch writes the .pth the converter reads (rap_jax never imports it)
torch = pytest.importorskip("torch")

DATA = pathlib.Path(__file__).resolve().parent / "data" / "full_width_r50_rap.npz"
CONFIG = "e2e_panoptic_rcnn_R_50_FPN_1x_relation_finetune.yaml"
IMAGES = ("astronaut", "coffee")
CANVAS = (800, 1216)
BOX_TOL = 5e-3  # px, see the module docstring


@pytest.fixture(scope="module")
def ref():
  with np.load(DATA) as d:
    return {k: d[k] for k in d.files}


@pytest.fixture(scope="module")
def run(fixtures_dir, tmp_path_factory):
  """Recipe -> .pth -> `python -m convert` -> one batch of both photos; numpy outputs."""
  from convert import cli
  manifest = json.loads((fixtures_dir / "state_dict_manifest.json").read_text())
  shapes = manifest["full_size_configs"][CONFIG]["state_dict"]
  sd = {k: torch.from_numpy(v) for k, v in
        recipe.state_dict((k, s["shape"]) for k, s in shapes.items()).items()}
  anchors = all_cell_anchors((4, 8, 16, 32, 64), (32, 64, 128, 256, 512), (0.5, 1.0, 2.0))
  for i, a in enumerate(anchors):
    sd[f"rpn.anchor_generator.cell_anchors.{i}"] = torch.tensor(np.asarray(a, np.float32))
  assert list(sd) != [] and set(sd) == set(shapes)
  tmp = tmp_path_factory.mktemp("full_width")
  pth, ckpt = tmp / "recipe.pth", tmp / "ckpt"
  torch.save({"model": {k: sd[k] for k in shapes}, "iteration": 0}, pth)
  del sd
  with contextlib.redirect_stdout(io.StringIO()):
    code = cli.main([str(pth), str(ckpt), "--config", "configs/rap_r50.py"])
  pth.unlink()
  assert code == 0

  config = rap_r50.get_config()
  config.model.nms_compare = "cpu"  # the original ran its CPU NMS kernel (IoU >= threshold)
  predictor = inference.Predictor.from_checkpoint(config, str(ckpt))
  items = [inference.prepare_image(T.load_image(fixtures_dir / f"image_{n}.png"), config.input, n)
           for n in IMAGES]
  batch = inference.make_batch(items, 2, CANVAS, config.postprocess.output_size_multiple)
  out = predictor(batch, intermediates=True)
  net = {k: np.asarray(v) for k, v in out["network"].items() if not isinstance(v, list)}
  net["input"] = batch.images
  return items, net


def ours_nchw(net, i, key, idx, shape):
  """Our canvas [N, H, W, C] values at the flat indices of the original's [1, C, H, W] tensor."""
  _, c, y, x = np.unravel_index(idx, tuple(shape))
  return net[key][i][y, x, c]


def assert_sampled(ref, name, key, mine, tol):
  """Sampled entries within tol * max|reference| (the `rel_err` measure of the other tests)."""
  val = ref[f"{name}/{key}__val"].astype(np.float64)
  err = np.abs(mine.astype(np.float64) - val).max() / float(ref[f"{name}/{key}__absmax"])
  assert err < tol, (name, key, err)


def det_order(net, ref, i, name):
  """Our proposal / detection rows in the original's order (swaps only inside score ties)."""
  n = len(ref[f"{name}/proposals_objectness"])
  prop, swaps = tie_aware_order(net["objectness"][i][:n], ref[f"{name}/proposals_objectness"],
                                net["proposals"][i][:n], ref[f"{name}/proposals_boxes"],
                                score_tol=PROPOSAL_SCORE_TOL, key_tol=BOX_TOL)
  m = len(ref[f"{name}/det_scores"])
  det, det_swaps = tie_aware_order(net["det_scores"][i][:m], ref[f"{name}/det_scores"],
                                   net["det_boxes"][i][:m], ref[f"{name}/det_boxes"],
                                   score_tol=DET_SCORE_TOL, key_tol=BOX_TOL)
  print(f"{name}: {len(swaps)} proposal tie swaps, detection tie swaps {det_swaps}")
  return prop, det


def test_reference_made_with_this_recipe(ref):
  meta = json.loads(str(ref["meta_json"]))
  assert meta["recipe_seed"] == recipe.SEED
  assert meta["recipe"] == {k: getattr(recipe, k) for k in dir(recipe)
                            if k.isupper() and k != "SEED"}
  assert meta["config"].endswith(CONFIG)


@pytest.mark.parametrize("i,name", list(enumerate(IMAGES)))
def test_input_and_sizes(run, ref, i, name):
  items, net = run
  assert list(items[i].resized_hw) == list(ref[f"{name}/image_size_resized"])
  assert list(items[i].padded_hw) == list(ref[f"{name}/padded_hw"])
  idx, shape = ref[f"{name}/input__idx"], ref[f"{name}/input__shape"]
  np.testing.assert_array_equal(ours_nchw(net, i, "input", idx, shape), ref[f"{name}/input__val"])


@pytest.mark.parametrize("i,name", list(enumerate(IMAGES)))
def test_backbone_fpn_rpn_head(run, ref, i, name):
  """C2-C5, P2-P6, RPN logits and deltas: 1e-4 relative, sampled entries and whole-tensor
  mean/std over the image's own padded block."""
  _, net = run
  keys = ([f"body_c{k}" for k in range(2, 6)] + [f"fpn_p{k}" for k in range(2, 7)] +
          [f"rpn_{t}_p{k}" for t in ("logits", "deltas") for k in range(2, 7)])
  for key in keys:
    shape = ref[f"{name}/{key}__shape"]
    assert_sampled(ref, name, key, ours_nchw(net, i, key, ref[f"{name}/{key}__idx"], shape), 1e-4)
    block = net[key][i][:shape[2], :shape[3]].astype(np.float64)
    scale = float(ref[f"{name}/{key}__absmax"])
    assert abs(block.mean() - ref[f"{name}/{key}__mean"]) < 1e-5 * scale, key
    assert abs(block.std() - ref[f"{name}/{key}__std"]) < 1e-5 * scale, key


@pytest.mark.parametrize("i,name", list(enumerate(IMAGES)))
def test_proposals_same_set_same_order(run, ref, i, name):
  _, net = run
  n = len(ref[f"{name}/proposals_objectness"])
  assert net["proposals_valid"][i].sum() == n
  prop, _ = det_order(net, ref, i, name)
  np.testing.assert_allclose(net["objectness"][i][:n][prop], ref[f"{name}/proposals_objectness"],
                             atol=PROPOSAL_SCORE_TOL, rtol=0)
  np.testing.assert_allclose(net["proposals"][i][:n][prop], ref[f"{name}/proposals_boxes"],
                             atol=BOX_TOL, rtol=0)


@pytest.mark.parametrize("i,name", list(enumerate(IMAGES)))
def test_box_head_and_detections(run, ref, i, name):
  _, net = run
  prop, det = det_order(net, ref, i, name)
  for key in ("box_class_logits", "box_regression"):
    row, col = np.unravel_index(ref[f"{name}/{key}__idx"], tuple(ref[f"{name}/{key}__shape"]))
    assert_sampled(ref, name, key, net[key][i][prop[row], col], 1e-3)
  n = len(ref[f"{name}/det_scores"])
  assert int(net["det_num"][i]) == n
  np.testing.assert_array_equal(net["det_labels"][i][:n][det], ref[f"{name}/det_labels"])
  np.testing.assert_allclose(net["det_scores"][i][:n][det], ref[f"{name}/det_scores"],
                             atol=DET_SCORE_TOL, rtol=0)
  np.testing.assert_allclose(net["det_boxes"][i][:n][det], ref[f"{name}/det_boxes"], atol=BOX_TOL,
                             rtol=0)
  assert not net["det_valid"][i][n:].any()


@pytest.mark.parametrize("i,name", list(enumerate(IMAGES)))
def test_mask_relation_semantic_heads(run, ref, i, name):
  _, net = run
  _, det = det_order(net, ref, i, name)
  n = len(ref[f"{name}/det_scores"])
  np.testing.assert_allclose(net["relation"][i][:n][det], ref[f"{name}/relation_val"], atol=1e-3,
                             rtol=0)
  yx = ref["mask_probs__yx"]
  probs = net["mask_probs"][i][:n][det]
  # 2.5e-4 = the mask-logit tolerance 1e-3 of test_model_parity times the sigmoid's largest slope
  # (measured max 1.5e-4 at p = 0.31; the small model's 1e-4 is too tight for 256-channel convs).
  np.testing.assert_allclose(probs[:, yx[:, 0], yx[:, 1]], ref[f"{name}/mask_probs__val"],
                             atol=2.5e-4, rtol=0)
  np.testing.assert_allclose(probs.astype(np.float64).mean(axis=(1, 2)),
                             ref[f"{name}/mask_probs__mean"], atol=1e-5, rtol=0)
  key = "mask_roi_features"  # original [N, C, 14, 14], ours [D, 14, 14, C]
  r, c, y, x = np.unravel_index(ref[f"{name}/{key}__idx"], tuple(ref[f"{name}/{key}__shape"]))
  assert_sampled(ref, name, key, net[key][i][det[r], y, x, c], 1e-3)
  key = "semantic_logits_quarter"
  mine = ours_nchw(net, i, "semantic_logits", ref[f"{name}/{key}__idx"],
                   ref[f"{name}/{key}__shape"])
  np.testing.assert_allclose(mine, ref[f"{name}/{key}__val"], atol=1e-3, rtol=0)
