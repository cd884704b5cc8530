"""Builder of ``tests/data/full_width_r50_rap.npz``: the ORIGINAL RAP's outputs for the full-size
R-50 RAP model with the weights of ``tests/full_width_recipe.py``, for
``test_full_width_parity.py``.

Runs in the original's environment rebuilt by ``shared/tools/original/setup.sh`` (no code of the
original is stored here; this script drives it through ``shared/tools/original/harness.py``):

  REF=/path/to/ref $REF/venv/bin/python tests/data/make_full_width_r50_rap.py [OUT.npz]

Model: ``configs/e2e_panoptic_rcnn_R_50_FPN_1x_relation_finetune.yaml`` unchanged (test size
800/1333, SIZE_DIVISIBILITY 32, CPU NMS/ROIAlign kernels), weights = the recipe's tensors for every
key of the model's ``state_dict()`` (checked against ``state_dict_manifest.json``) plus the model's
own anchor buffers. Each photo runs alone (batch of one, padded to its own multiple of 32), as the
original's test loop does. Intermediates come from forward hooks. Takes about 2 minutes.

Stored per image ``<name>/...`` (float32 unless said), small enough to commit:
  * ``<tensor>__idx`` (uint32 flat indices into the original's NCHW tensor), ``<tensor>__val``,
    ``<tensor>__shape``, ``<tensor>__absmax``, ``<tensor>__mean`` / ``__std`` (float64, whole
    tensor) for ``input``, ``body_c2..5``, ``fpn_p2..6``, ``rpn_logits_p2..6``,
    ``rpn_deltas_p2..6``, ``semantic_logits_quarter``, ``box_class_logits`` [R, 81],
    ``box_regression`` [R, 324] and
    ``mask_roi_features`` [N, C, 14, 14] (sampled: 256 / 2048 entries, see SAMPLES);
  * ``proposals_boxes`` [R, 4], ``proposals_objectness`` [R] (RPN output, all of it);
  * ``det_boxes`` [N, 4], ``det_scores``, ``det_labels`` (int64), ``relation_val`` [N] (all of it);
  * ``mask_probs__val`` [N, 64] at the pixels ``mask_probs__yx`` [64, 2] of the 28x28 masks,
    ``mask_probs__mean`` [N] (float64);
  * ``image_size_resized`` (h, w), ``padded_hw``; top-level ``meta_json``.
"""
from __future__ import annotations

import json
import os
import pathlib
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
TESTS = HERE.parent
SHARED = TESTS.parents[1] / "shared"
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(SHARED / "tools" / "original"))

import full_width_recipe as recipe  # noqa: E402

CONFIG = "configs/e2e_panoptic_rcnn_R_50_FPN_1x_relation_finetune.yaml"
IMAGES = ("astronaut", "coffee")
OUT = HERE / "full_width_r50_rap.npz"
SAMPLES = {"dense": 256, "rows": 2048, "mask_pixels": 64}


def sample(arrays: dict, rng, prefix: str, name: str, x: np.ndarray, n: int) -> None:
  idx = np.sort(rng.choice(x.size, size=min(n, x.size), replace=False)).astype(np.uint32)
  x64 = x.astype(np.float64)
  arrays[f"{prefix}/{name}__idx"] = idx
  arrays[f"{prefix}/{name}__val"] = x.reshape(-1)[idx].astype(np.float32)
  arrays[f"{prefix}/{name}__shape"] = np.asarray(x.shape, np.int64)
  arrays[f"{prefix}/{name}__absmax"] = np.float32(np.abs(x).max())
  arrays[f"{prefix}/{name}__mean"] = np.float64(x64.mean())
  arrays[f"{prefix}/{name}__std"] = np.float64(x64.std())


def main(out: pathlib.Path = OUT) -> None:
  import harness as H  # shared/tools/original (needs REF)
  torch = H.enter_repo(2)
  cfg = H.load_cfg(os.path.join(H.SRC, CONFIG))
  model = H.build_model(cfg, None, seed=0)
  sd = model.state_dict()
  manifest = json.loads((SHARED / "fixtures" / "state_dict_manifest.json").read_text())
  shapes = manifest["full_size_configs"][pathlib.Path(CONFIG).name]["state_dict"]
  assert list(shapes) == list(sd), "manifest keys differ from the model's state_dict"
  assert all(tuple(shapes[k]["shape"]) == tuple(sd[k].shape) for k in sd)
  weights = recipe.state_dict((k, v["shape"]) for k, v in shapes.items())
  anchors = [f"rpn.anchor_generator.cell_anchors.{i}" for i in range(5)]
  assert sorted(set(sd) - set(weights)) == anchors
  model.load_state_dict({k: torch.from_numpy(weights[k]) if k in weights else sd[k] for k in sd},
                        strict=True)
  loader = H.make_loader(cfg, [str(SHARED / "fixtures" / f"image_{n}.png") for n in IMAGES])

  cap = {}
  def hook(name):
    def fn(module, inputs, output):
      cap[name] = output
    return fn
  model.backbone.body.register_forward_hook(hook("body"))
  model.backbone.fpn.register_forward_hook(hook("fpn"))
  model.rpn.head.register_forward_hook(hook("rpn_head"))
  model.rpn.register_forward_hook(hook("rpn"))
  model.roi_heads.box.predictor.register_forward_hook(hook("box"))
  model.roi_heads.mask.feature_extractor.register_forward_hook(hook("mask_features"))
  model.semantic_head.semantic_final[0].register_forward_hook(hook("semantic"))

  rng = np.random.default_rng(0)
  arrays, summary = {}, {}
  mask_yx = np.stack(np.unravel_index(rng.choice(28 * 28, SAMPLES["mask_pixels"], replace=False),
                                      (28, 28)), 1)
  npy = lambda t: t.detach().cpu().numpy()
  with torch.no_grad():
    for name, (images, _, _) in zip(IMAGES, loader):
      cap.clear()
      det = model(images)[0]
      p = name
      dense = {"input": npy(images.tensors), "semantic_logits_quarter": npy(cap["semantic"])}
      for k, f in enumerate(cap["body"]):
        dense[f"body_c{k + 2}"] = npy(f)
      for k, f in enumerate(cap["fpn"]):
        dense[f"fpn_p{k + 2}"] = npy(f)
      for k, (lg, dl) in enumerate(zip(*cap["rpn_head"])):
        dense[f"rpn_logits_p{k + 2}"] = npy(lg)
        dense[f"rpn_deltas_p{k + 2}"] = npy(dl)
      for key, x in dense.items():
        sample(arrays, rng, p, key, x, SAMPLES["dense"])
      props = cap["rpn"][0][0]
      arrays[f"{p}/proposals_boxes"] = npy(props.bbox)
      arrays[f"{p}/proposals_objectness"] = npy(props.get_field("objectness"))
      logits, regression = cap["box"]
      sample(arrays, rng, p, "box_class_logits", npy(logits), SAMPLES["rows"])
      sample(arrays, rng, p, "box_regression", npy(regression), SAMPLES["rows"])
      sample(arrays, rng, p, "mask_roi_features", npy(cap["mask_features"][1]), SAMPLES["rows"])
      scores = npy(det.get_field("scores"))
      arrays[f"{p}/det_boxes"] = npy(det.bbox)
      arrays[f"{p}/det_scores"] = scores
      arrays[f"{p}/det_labels"] = npy(det.get_field("labels"))
      arrays[f"{p}/relation_val"] = npy(det.get_field("relation_val")).reshape(-1)
      masks = npy(det.get_field("mask"))[:, 0]
      arrays[f"{p}/mask_probs__val"] = masks[:, mask_yx[:, 0], mask_yx[:, 1]]
      arrays[f"{p}/mask_probs__mean"] = masks.astype(np.float64).mean(axis=(1, 2))
      arrays[f"{p}/image_size_resized"] = np.asarray(images.image_sizes[0], np.int64)
      arrays[f"{p}/padded_hw"] = np.asarray(images.tensors.shape[2:], np.int64)
      obj = np.sort(arrays[f"{p}/proposals_objectness"])
      summary[name] = {
          "resized_hw": list(images.image_sizes[0]), "padded_hw": list(images.tensors.shape[2:]),
          "proposals": int(len(obj)), "detections": int(len(scores)),
          "detections_ge_0.6": int((scores >= 0.6).sum()), "max_score": float(scores.max()),
          "classes": int(len(np.unique(arrays[f"{p}/det_labels"]))),
          "proposal_objectness_distinct": int(len(np.unique(obj))),
          "rpn_logit_max": {k: float(dense[k].max()) for k in dense if k.startswith("rpn_logits")}}
      print(name, json.dumps(summary[name]), flush=True)
  arrays["mask_probs__yx"] = mask_yx.astype(np.int64)
  meta = {"made_by": "tests/data/make_full_width_r50_rap.py", "original": "RAPNet/RAP @ 83662d8",
          "config": CONFIG, "recipe_seed": recipe.SEED,
          "recipe": {k: getattr(recipe, k) for k in dir(recipe) if k.isupper() and k != "SEED"},
          "torch": torch.__version__, "threads": torch.get_num_threads(),
          "cpu_capability": torch.backends.cpu.get_cpu_capability(), "samples": SAMPLES,
          "images": summary}
  arrays["meta_json"] = np.asarray(json.dumps(meta))
  np.savez_compressed(out, **arrays)
  print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
  main(pathlib.Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else OUT)
