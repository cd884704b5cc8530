"""A full-size config (R-50 RAP) end to end on CPU: build, convert a synthetic checkpoint with the
manifest's shapes through `python -m convert`, predict the coffee photo at 800x1216.

Correctness of full size comes from the code shared with the small fixture models; this test
shows the full-size layouts convert one to one and the jitted path runs at the real test size.
"""
import json

import numpy as np
import pytest

from configs import rap_r50
from rap_jax import inference
from rap_jax.data import transforms as T
from rap_jax.modeling.anchors import all_cell_anchors

torch = pytest.importorskip("torch")  # writes the synthetic .pth (rap_jax never imports it)

CONFIG = "e2e_panoptic_rcnn_R_50_FPN_1x_relation_finetune.yaml"


def synthetic_state_dict(manifest: dict) -> dict:
  """Deterministic weights with the manifest's keys/shapes; classes 1..5 favoured."""
  rng = np.random.default_rng(0)
  anchors = all_cell_anchors((4, 8, 16, 32, 64), (32, 64, 128, 256, 512), (0.5, 1.0, 2.0))
  sd = {}
  for key, spec in manifest[CONFIG]["state_dict"].items():
    shape = tuple(spec["shape"])
    if "cell_anchors" in key:
      a = anchors[int(key.rsplit(".", 1)[1])]
    elif key.endswith(("running_mean", ".bias")):
      a = np.zeros(shape)
    elif key.endswith("running_var") or len(shape) == 1:
      a = np.ones(shape)
    else:
      fan_in = shape[0] if "conv5_mask" in key else int(np.prod(shape[1:]))
      a = rng.normal(0.0, np.sqrt(1.0 / fan_in), shape)
    sd[key] = torch.tensor(np.asarray(a, np.float32))
  sd["roi_heads.box.predictor.cls_score.bias"][1:6] = 3.0
  return sd


def test_full_size_rap_r50_converts_and_predicts(fixtures_dir, tmp_path):
  from convert import cli
  manifest = json.loads((fixtures_dir / "state_dict_manifest.json").read_text())
  manifest = manifest["full_size_configs"]
  pth = tmp_path / "rap_r50_synthetic.pth"
  torch.save({"model": synthetic_state_dict(manifest), "iteration": 160000}, pth)
  ckpt = tmp_path / "ckpt"
  assert cli.main([str(pth), str(ckpt), "--config", "configs/rap_r50.py", "-v"]) == 0

  config = rap_r50.get_config()
  config.input.canvas_sizes = ((800, 1216),)  # the one canvas this image needs
  predictor = inference.Predictor.from_checkpoint(config, str(ckpt))
  item = inference.prepare_image(T.load_image(fixtures_dir / "image_coffee.png"), config.input)
  assert item.resized_hw == (800, 1200) and item.padded_hw == (800, 1216)
  batch = inference.make_batch([item], 1, (800, 1216), config.postprocess.output_size_multiple)
  out = predictor(batch, intermediates=True)
  net = out["network"]
  assert net["body_c5"].shape == (1, 25, 38, 2048)
  assert net["fpn_p6"].shape == (1, 13, 19, 256)
  pv = np.asarray(net["proposals_valid"][0])
  r = int(pv.sum())  # random weights: many anchors collapse onto the same boxes under NMS 0.7
  assert 0 < r <= 1000 and pv[:r].all() and not pv[r:].any()
  n = int(out["num_detections"][0])
  assert 0 < n <= config.model.roi_heads.box.detections_per_img
  valid = np.asarray(out["valid"][0])
  assert valid[:n].all() and not valid[n:].any()
  for key in ("scores", "relation", "boxes"):
    assert np.isfinite(np.asarray(out[key])).all(), key
  boxes = np.asarray(out["boxes"][0])[:n]  # original pixels of the 400x600 photo
  assert (boxes[:, [0, 2]] >= 0).all() and (boxes[:, [0, 2]] <= 600).all()
  assert (boxes[:, [1, 3]] >= 0).all() and (boxes[:, [1, 3]] <= 400).all()
  labels = np.asarray(out["labels_contiguous"][0])[:n]
  assert ((labels >= 1) & (labels <= 80)).all()
  fused = out["fusion"]
  assert int(np.asarray(fused.segment_valid[0]).sum()) > 0
  assert not np.asarray(fused.segment_map[0])[400:].any()  # nothing beyond the photo
