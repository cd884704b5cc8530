"""One training iteration of the original vs ours (fixtures README, "Training fixtures").

The fixture `train_small_astronaut_coffee.npz` records one training iteration of the ORIGINAL
(training-mode forward, backward, one SGD step) of the small RAP model and of the small OCFusion
model on two images. This module is the one home of everything needed to replay it here:

  * `load_fixture`, `fixture_batch`, `pipeline_batch`: the batch, from the npz (the original's
    network input and GT) or through our input pipeline from the training data folder;
  * `fixture_samples`: the original's random draws (sampled anchors / ROIs / OCFusion pairs),
    its RPN proposals and its 28x28 mask targets, injected into `PanopticRCNN.losses`;
  * `torch_to_ours`, `our_param_path`: state_dict names and layouts -> our parameter tree;
  * `run_iteration`: jit(value_and_grad(total loss)) with intermediates, plus the float32 error
    scales of every gradient (its final sum's |terms|, sampled noise; `compare_gradients`);
  * `compare_*`: targets (exact), losses, gradients (float32 error bounds, see
    `compare_gradients`) and the two recorded optimizer steps (`compare_optimizer_step`), each a
    `Comparison` with the worst error / tolerance ratio;
  * `run_all`: all of it, as scripts/train_parity.py prints it.

Why inject: the samplers' `torch.randperm` draws cannot be reproduced outside PyTorch, and the
proposals depend on near-tie orderings of the RPN scores (tests/test_train_losses.py
`test_own_train_proposals_are_the_original_set`). The original rasterises polygons for the mask
targets; our bitmap-derived targets are measured separately (`test_mask_targets_from_bitmaps`).
Both images use padded_hw = (320, 480): the original pads every image of a batch to the batch's
size (our pipeline pads each image to its own size, which is the original's run of that image
alone).
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from convert import hooks, name_table
from rap_jax.modeling import losses as loss_lib
from rap_jax.modeling.panoptic_rcnn import PanopticRCNN
from rap_jax.parity import summands

NPZ = "train_small_astronaut_coffee.npz"
DATA_DIR = "train_data_astronaut_coffee"
CHECKPOINTS = {"rap": "rap_small_legacy.pth", "ocfusion": "ocfusion_small_legacy.pth"}
M = 8            # GT slots
R = 2000         # RPN train proposals (fpn_post_nms_top_n_train)
P = 128          # positive ROI slots (512 * 0.25)
CANVAS = (320, 480)
NUM_GRADS = 50   # grad/<param> tensors of the RAP run
NUM_OC_GRADS = 12  # oc_grad/<param> tensors of the OCFusion run
# Expected counts of the recorded iteration (fixtures README).
COUNTS = dict(num_sampled_anchors=512, num_pos_anchors=38, num_sampled_rois=1024,
              num_pos_rois=87, num_relation_pairs=740)
OC_COUNTS = dict(num_occlusion_candidates=856 + 624, num_occlusion_samples=256)
LOSS_RTOL = 1e-5   # each loss (the README: ~1e-7 vs float64, relation ~1e-6)
TOTAL_RTOL = 1e-6  # the float32 total
EPS32 = float(np.finfo(np.float32).eps)  # 2^-23


# ----------------------------------------------------------------------------- the fixture


def load_fixture(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """The npz as a dict of arrays (read once, fully)."""
  with np.load(path) as d:
    return {k: d[k] for k in d.files}


def meta(d: Mapping[str, np.ndarray]) -> dict:
  return json.loads(str(d["meta_json"]))


def _polygons(d, i) -> dict[int, list[np.ndarray]]:
  coords, offsets, inst = (d[f"gt{i}_poly_{k}"] for k in ("coords", "offsets", "instance"))
  out: dict[int, list[np.ndarray]] = {}
  for k, g in enumerate(inst):
    out.setdefault(int(g), []).append(coords[offsets[k]:offsets[k + 1]].astype(np.float64))
  return out


def _rasterize(polys, h: int, w: int) -> np.ndarray:
  import pycocotools.mask as mask_util  # pylint: disable=import-outside-toplevel
  rles = mask_util.frPyObjects([list(p) for p in polys], h, w)
  return mask_util.decode(mask_util.merge(rles))


def fixture_batch(d: Mapping[str, np.ndarray]) -> dict:
  """The training batch of the fixture in the pipeline's layout (mask_format 'canvas'): the
  original's network input (NCHW -> NHWC), GT boxes / labels / ids / relations / semantic
  labels, and GT bitmaps rasterised from the stored polygons at the resized size."""
  b, (hc, wc) = 2, CANVAS
  batch = dict(image=np.zeros((b, hc, wc, 3), np.float32),
               semantic=np.zeros((b, hc, wc), np.uint8), boxes=np.zeros((b, M, 4), np.float32),
               labels=np.zeros((b, M), np.int32), instance_ids=np.zeros((b, M), np.int32),
               instance_valid=np.zeros((b, M), bool), relations=np.zeros((b, M, M), bool),
               masks=np.zeros((b, M, hc, wc), np.uint8))
  batch["image"][:] = d["input"].transpose(0, 2, 3, 1)
  sizes = d["image_sizes"].astype(np.int32)
  for i in range(b):
    h, w = (int(v) for v in sizes[i])
    g = len(d[f"gt{i}_boxes"])
    ids = d[f"gt{i}_instance_ids"]
    batch["boxes"][i, :g] = d[f"gt{i}_boxes"]
    batch["labels"][i, :g] = d[f"gt{i}_labels"]
    batch["instance_ids"][i, :g] = ids
    batch["instance_valid"][i, :g] = True
    slot = {int(v): k for k, v in enumerate(ids)}
    for front, back in d[f"gt{i}_relations"]:
      batch["relations"][i, slot[int(front)], slot[int(back)]] = True
    batch["semantic"][i, :h, :w] = d[f"gt{i}_semantic_label"]
    for k, polys in _polygons(d, i).items():
      batch["masks"][i, k, :h, :w] = _rasterize(polys, h, w)
  batch["image_info"] = dict(
      original_hw=sizes, resized_hw=sizes, padded_hw=np.tile(np.int32(CANVAS), (b, 1)),
      canvas_hw=np.tile(np.int32(CANVAS), (b, 1)), image_id=np.array([1, 2], np.int32),
      flipped=np.zeros(b, bool), is_padding=np.zeros(b, bool))
  return batch


def pipeline_batch(data_dir: str | pathlib.Path, workdir: str | pathlib.Path) -> dict:
  """The fixture's two images through OUR input pipeline, from the training data folder
  (`train_data_astronaut_coffee/` layout: instances_train_with_relation.json, images/,
  semantic_train2017/): COCO builder in `workdir`, the original's training transform with the
  fixture's sizes (MIN_SIZE_TRAIN 320, MAX 475), no flip, PIL resize (bit-exact). Images are
  ordered by image id and padded to the batch's size, as the original's BatchCollator does."""
  import shutil  # pylint: disable=import-outside-toplevel

  import ml_collections  # pylint: disable=import-outside-toplevel
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  from rap_jax.data import coco  # pylint: disable=import-outside-toplevel
  from rap_jax.data import input_pipeline as ip  # pylint: disable=import-outside-toplevel

  src, raw = pathlib.Path(data_dir), pathlib.Path(workdir) / "raw"
  (raw / "annotations").mkdir(parents=True, exist_ok=True)
  if not (raw / "images" / "train2017").exists():
    shutil.copytree(src / "images", raw / "images" / "train2017")
    shutil.copy(src / "instances_train_with_relation.json",
                raw / "annotations" / "instances_train2017_with_relation.json")
    shutil.copytree(src / "semantic_train2017", raw / "annotations" / "semantic_train2017")
  import contextlib  # pylint: disable=import-outside-toplevel
  import io  # pylint: disable=import-outside-toplevel
  tfds.disable_progress_bar()
  with contextlib.redirect_stdout(io.StringIO()):  # tfds prints "Downloading and preparing"
    builder = coco.CocoPanopticRap(raw_dir=raw, config="train_parity", data_dir=raw / "tfds",
                                   num_workers=1)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        compute_stats=tfds.download.ComputeStatsMode.SKIP))
  input_config = ml_collections.ConfigDict(dict(
      min_size_train=(320,), max_size_train=475, min_size_test=320, max_size_test=475,
      pixel_mean=(102.9801, 115.9465, 122.7717), pixel_std=(1.0, 1.0, 1.0),
      size_divisibility=32, canvas_sizes=(CANVAS,), flip_prob=0.0))
  ds = ip.make_train_dataset(builder, split="train2017", input_config=input_config,
                             batch_size=2, max_instances=M, seed=0, flip_prob=0.0,
                             process_index=0, process_count=1, image_resize="pil")
  with ip.as_numpy(ds) as it:
    batch = next(it)
  order = np.argsort(batch["image_info"]["image_id"])
  batch = {k: (v[order] if k != "image_info" else {n: x[order] for n, x in v.items()})
           for k, v in batch.items()}
  info = batch["image_info"]
  info["padded_hw"] = np.tile(np.int32(CANVAS), (len(order), 1))  # the batch's padded size
  return batch


def compare_batch(d: Mapping[str, np.ndarray], batch: Mapping[str, Any]) -> "Comparison":
  """A pipeline batch against the original's network input and GT (all exact)."""
  ref = fixture_batch(d)
  bad = []
  for key in ("image", "semantic", "boxes", "labels", "instance_ids", "instance_valid",
              "relations"):
    if not np.array_equal(np.asarray(batch[key]), ref[key]):
      bad.append(key)
  for key in ("resized_hw", "padded_hw"):
    if not np.array_equal(np.asarray(batch["image_info"][key]), ref["image_info"][key]):
      bad.append(f"image_info.{key}")
  return Comparison("inputs", 0.0 if not bad else math.inf, 1.0, bad)


def _index_sets(sets, size: int) -> np.ndarray:
  out = -np.ones((len(sets), size), np.int32)
  for i, s in enumerate(sets):
    s = np.sort(np.asarray(s))
    out[i, :len(s)] = s
  return out


def oc_flat_index(rows: np.ndarray) -> np.ndarray:
  """Fixture OCFusion rows (first, second, target) -> our flat sample index (p*P + q)*2 + kind."""
  a, b, t = rows[:, 0], rows[:, 1], rows[:, 2]
  return np.where(t == 1, (a * P + b) * 2, (b * P + a) * 2 + 1)


def fixture_samples(d: Mapping[str, np.ndarray], ocfusion: bool = False) -> dict:
  """The original's sampler decisions (and proposals, mask targets) in `samples` layout."""
  s = dict(proposals=np.zeros((2, R, 4), np.float32), proposals_valid=np.zeros((2, R), bool),
           mask_targets=np.zeros((2, P, 28, 28), np.float32))
  rpn, roi, oc = [], [], []
  off = d["rel_positive_offsets"]
  for i in range(2):
    g = len(d[f"gt{i}_boxes"])
    props = d[f"roi_proposals_img{i}"][:-g]  # the GT rows are appended by `losses` itself
    s["proposals"][i, :len(props)] = props
    s["proposals_valid"][i, :len(props)] = True
    rpn.append(np.concatenate([d[f"rpn_pos_idx_img{i}"], d[f"rpn_neg_idx_img{i}"]]))
    idx = np.concatenate([d[f"roi_pos_idx_img{i}"], d[f"roi_neg_idx_img{i}"]])
    roi.append(np.where(idx < len(props), idx, idx - len(props) + R))  # GT rows: slot R + k
    s["mask_targets"][i, :off[i + 1] - off[i]] = d["mask_targets"][off[i]:off[i + 1]]
    oc.append(oc_flat_index(d[f"oc_pairs_img{i}"][d[f"oc_used_idx_img{i}"]]))
  s["rpn_sampled"] = _index_sets(rpn, 256)
  s["roi_sampled"] = _index_sets(roi, 512)
  if ocfusion:
    s["oc_sampled"] = _index_sets(oc, 128)
  return s


# ------------------------------------------------------------------------------ names


def torch_to_ours(torch_key: str, value: np.ndarray) -> tuple[str, np.ndarray]:
  """state_dict key -> (our '/'-path under 'params', the tensor in our layout)."""
  module, leaf = name_table.split_key(torch_key)
  ours, value = hooks.HOOKS[name_table.kind_of(module)].apply(leaf, value)
  return name_table.our_path("params", module, ours), value


def our_param_path(torch_key: str) -> str:
  """'roi_heads.relation.predictor.relation_val.weight' -> 'roi_heads/relation/.../kernel'."""
  module, leaf = name_table.split_key(torch_key)
  hook = hooks.HOOKS[name_table.kind_of(module)]
  if hook.collection != "params":
    raise KeyError(f"{torch_key} is not a parameter ({hook.collection})")
  return name_table.our_path(hook.collection, module, hook.leaves[leaf])[len("params/"):]


def get_path(tree, path: str) -> np.ndarray:
  """The leaf at '/'-path `path` (a leading 'params/' is skipped)."""
  parts = path.split("/")
  if parts[0] == "params":
    parts = parts[1:]
  for part in parts:
    tree = tree[part]
  return np.asarray(tree)


def fixture_grads(d: Mapping[str, np.ndarray], prefix: str = "grad/") -> dict[str, np.ndarray]:
  """{torch name: gradient in our layout} of the fixture's `prefix` keys."""
  return {k[len(prefix):]: torch_to_ours(k[len(prefix):], v)[1]
          for k, v in d.items() if k.startswith(prefix)}


# ------------------------------------------------------------------------------ the run


@dataclasses.dataclass
class Iteration:
  """Our run of the recorded iteration."""
  total: float
  losses: dict[str, float]
  aux: dict            # counts, samples, intermediates (numpy)
  grads: Any           # gradient tree (params, or params['roi_heads'][grad_subtree])
  summands: Any        # S: sum of |terms| of each gradient's final sum (summands.py)
  squares: Any         # Q: sum of terms^2 of that sum
  noise: Any           # sigma: per tensor, max |g(perturbed) - g| over the noise samples


_COMPILED: dict[tuple[str, str | None], Callable] = {}
_RUNS: dict[str, Iteration] = {}


def _loss_and_grad(config, grad_subtree: str | None) -> Callable:
  """jit((loss, aux), grads, S, Q) of `config`'s model, compiled once per process."""
  key = (json.dumps(config.model.to_dict(), sort_keys=True, default=str), grad_subtree)
  if key not in _COMPILED:
    model = PanopticRCNN.from_config(config.model)
    precision = config.model.get("matmul_precision", "highest")

    def loss_fn(sub, params, buffers, batch, samples):
      if grad_subtree is not None:
        params = dict(params, roi_heads=dict(params["roi_heads"], **{grad_subtree: sub}))
      else:
        params = sub
      with jax.default_matmul_precision(precision):
        out, aux = model.apply({"params": params, "buffers": buffers}, batch,
                               jax.random.PRNGKey(0), samples, True, method=PanopticRCNN.losses)
      return loss_lib.total_loss(out), (out, aux)

    _COMPILED[key] = jax.jit(lambda *args: summands.value_grad_and_summands(loss_fn, *args))
  return _COMPILED[key]


def _fingerprint(*trees) -> str:
  import hashlib  # pylint: disable=import-outside-toplevel
  h = hashlib.sha256()
  for tree in trees:
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      a = np.ascontiguousarray(np.asarray(leaf))
      h.update(f"{jax.tree_util.keystr(path)}{a.dtype}{a.shape}".encode())
      h.update(a.tobytes())
  return h.hexdigest()


def perturbed(tree: Any, seed: int, u: float = EPS32) -> Any:
  """Every float leaf times (1 +- u), independent random signs (`compare_gradients`)."""
  rng = np.random.default_rng(seed)

  def one(x):
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
      return x
    return (x * (1.0 + u * rng.choice([-1.0, 1.0], size=x.shape))).astype(x.dtype)
  return jax.tree.map(one, tree)


def run_iteration(config, variables: Mapping[str, Any], batch: Mapping[str, Any],
                  samples: Mapping[str, Any], grad_subtree: str | None = None,
                  noise_samples: int = 2) -> Iteration:
  """Our training forward + backward of `batch` with the injected `samples`.

  The gradient is w.r.t. all params, or only `params['roi_heads'][grad_subtree]` (e.g.
  'relation'). Besides it: S and Q of every gradient's final sum, and the float32 noise sigma of
  each gradient tensor from `noise_samples` runs with perturbed weights and image
  (`compare_gradients`). Results are memoised per process (same model, weights, batch, samples).
  """
  key = _fingerprint(config.model.to_dict(), grad_subtree, noise_samples, variables,
                     dict(batch), dict(samples))
  if key in _RUNS:
    return _RUNS[key]
  fn = _loss_and_grad(config, grad_subtree)

  def call(v, b):
    params = v["params"]
    sub = params if grad_subtree is None else params["roi_heads"][grad_subtree]
    return fn(sub, params, v["buffers"], dict(b), dict(samples))

  (total, (out, aux)), grads, s, q = call(variables, batch)
  grads = jax.tree.map(np.asarray, grads)
  noise = jax.tree.map(lambda g: np.zeros((), np.float64), grads)
  for k in range(noise_samples):
    v = dict(variables, params=perturbed(variables["params"], 2 * k + 1),
             buffers=perturbed(variables["buffers"], 2 * k + 2))
    b = dict(batch, image=perturbed(np.asarray(batch["image"]), 2 * k + 3))
    other = jax.tree.map(np.asarray, call(v, b)[1])
    noise = jax.tree.map(
        lambda n, g, h: np.maximum(n, np.abs(h.astype(np.float64) - g).max()), noise, grads,
        other)
  run = Iteration(float(total), {k: float(v) for k, v in out.items()},
                  jax.tree.map(np.asarray, aux), grads, jax.tree.map(np.asarray, s),
                  jax.tree.map(np.asarray, q), noise)
  _RUNS[key] = run
  return run


# ------------------------------------------------------------------------------ comparisons


@dataclasses.dataclass
class Comparison:
  """One group of checks: `ratio` = worst error / its tolerance (<= 1 passes; 0 if exact,
  inf for a discrete mismatch); `failures` names what is off; `worst` the worst item."""
  name: str
  ratio: float
  tolerance: float = 1.0   # ratio threshold
  failures: list[str] = dataclasses.field(default_factory=list)
  worst: str = ""
  values: dict = dataclasses.field(default_factory=dict)  # item -> measured value
  summary: str = ""        # how the one-line report shows it
  headline: float = 0.0    # the number the one-line report quotes (e.g. max relative error)

  @property
  def ok(self) -> bool:
    return not self.failures and self.ratio <= self.tolerance

  def message(self) -> str:
    what = "; ".join(self.failures[:6]) or f"worst {self.worst} ratio {self.ratio:.3g}"
    return f"{self.name}: {what}"


def _checks(name: str, items: Sequence[tuple[str, float, float]], summary: str) -> Comparison:
  """items: (what, error, tolerance) -> Comparison of the worst error/tolerance."""
  ratios = {w: (e / t if t > 0 else (0.0 if e == 0 else math.inf)) for w, e, t in items}
  values = {w: e for w, e, _ in items}
  worst = max(ratios, key=ratios.get) if ratios else ""
  ratio = ratios[worst] if ratios else 0.0
  failures = [f"{w} error {values[w]:.3g} > tolerance {t:.3g}" for w, e, t in items
              if not ratios[w] <= 1.0]
  return Comparison(name, ratio, 1.0, failures, worst, values, summary)


def compare_losses(d: Mapping[str, np.ndarray], run: Iteration, prefix: str = "") -> Comparison:
  """Each loss within LOSS_RTOL relative of the recorded one, the float32 total within
  TOTAL_RTOL (the README: float64 recomputations agree to ~1e-7, the relation loss ~1e-6)."""
  if tuple(meta(d)["loss_keys"]) != loss_lib.LOSS_ORDER:
    return Comparison("losses", math.inf, failures=[f"loss order {meta(d)['loss_keys']}"])
  items, rel = [], {}
  for k in loss_lib.LOSS_ORDER:
    want = float(d[f"{prefix}{k}"])
    rel[k] = abs(run.losses[k] - want) / abs(want)
    items.append((k, rel[k], LOSS_RTOL))
  want = float(d[f"{prefix}loss_total"])
  rel["loss_total"] = abs(run.total - want) / abs(want)
  items.append(("loss_total", rel["loss_total"], TOTAL_RTOL))
  out = _checks("losses", items, f"losses max rel {max(rel.values()):.2g}")
  out.headline = max(rel.values())
  return out


def compare_targets(d: Mapping[str, np.ndarray], run: Iteration) -> Comparison:
  """Discrete targets exactly the original's (RPN matches / labels, ROI matches, sampled ROI
  labels, matched GT, boxes, positive order, relation pairs, counts); continuous ones within
  float32 noise: positive regression targets 1e-5, GT-class mask logits and relation values 1e-4
  absolute (outputs of the whole network)."""
  from rap_jax.reference import matcher as ref_matcher  # pylint: disable=import-outside-toplevel
  it = run.aux["intermediates"]
  bad: list[str] = []

  def same(name, mine, want):
    if np.shape(mine) != np.shape(want) or not np.array_equal(mine, want):
      bad.append(name)

  same("rpn_matched_idxs", it["rpn_matched"], d["rpn_matched_idxs"])
  same("rpn_labels", it["rpn_labels"], d["rpn_labels"])
  cat = lambda k: np.concatenate(list(it[k]))
  for i in range(2):
    g = len(d[f"gt{i}_boxes"])
    n = len(d[f"roi_proposals_img{i}"]) - g
    same(f"roi_matched_idxs_img{i}",
         np.concatenate([it["roi_matched"][i][:n], it["roi_matched"][i][R:R + g]]),
         d[f"roi_matched_idxs_img{i}"])
  same("roi_sampled_labels", cat("roi_sampled_labels"), d["roi_sampled_labels"])
  same("roi_sampled_matched_gt", cat("roi_sampled_matched"), d["roi_sampled_matched_gt"])
  same("roi_sampled_boxes", cat("roi_sampled_boxes"), d["roi_sampled_boxes"])
  slots = [s[s >= 0] + 512 * i for i, s in enumerate(it["positive_slot"])]
  same("roi_positive_index", np.concatenate(slots), d["roi_positive_index"])
  counts = {k: int(run.aux[k]) for k in COUNTS if k in run.aux}
  if counts != COUNTS:
    bad.append(f"counts {counts}")
  off = d["rel_positive_offsets"]
  ids = d["roi_sampled_instance_ids"][d["roi_positive_index"]]
  for i in range(2):  # ranking pairs: the original's (i, j, front, back) set
    sel = d["rel_pair_image"] == i
    want = {(int(a - off[i]), int(b - off[i]), int(f - off[i]), int(k - off[i]))
            for a, b, f, k in zip(d["rel_pair_i"][sel], d["rel_pair_j"][sel],
                                  d["rel_pair_front"][sel], d["rel_pair_back"][sel])}
    rels = {(int(a), int(b)) for a, b in d[f"gt{i}_relations"]}
    if set(ref_matcher.relation_pairs(ids[off[i]:off[i + 1]], rels)) != want:
      bad.append(f"reference relation pairs img{i}")
    signs = it["relation_signs"][i]
    mine = {(int(a), int(b), int(a if signs[a, b] > 0 else b), int(b if signs[a, b] > 0 else a))
            for a, b in zip(*np.nonzero(signs))}
    if mine != want:
      bad.append(f"relation pairs img{i}")
  pos = d["roi_sampled_labels"] > 0  # background targets are unused (computed vs GT 0)
  per_img = lambda k: np.concatenate([it[k][i][:off[i + 1] - off[i]] for i in range(2)])
  err = lambda a, b: float(np.abs(np.asarray(a, np.float64) - b).max()) if len(b) else 0.0
  items = [("roi regression targets",
            err(cat("roi_sampled_regression_targets")[pos], d["roi_sampled_reg_targets"][pos]),
            1e-5),
           ("mask logits", err(per_img("mask_logits"), d["mask_logits_gt"]), 1e-4),
           ("relation values", err(per_img("relation"), d["rel_values"]), 1e-4)]
  out = _checks("targets", items, "")
  out.failures = [f"{b} differ" for b in bad] + out.failures
  out.summary = "targets identical" if not bad else f"targets differ ({', '.join(bad[:3])})"
  return out


def compare_ocfusion_samples(d: Mapping[str, np.ndarray], run: Iteration) -> Comparison:
  """The OCFusion head saw the original's rows (ascending flat order); its probabilities within
  1e-5; candidate / sample counts."""
  it = run.aux["intermediates"]
  bad, items = [], []
  counts = {k: int(run.aux[k]) for k in OC_COUNTS}
  if counts != OC_COUNTS:
    bad.append(f"counts {counts}")
  for i in range(2):
    rows = d[f"oc_pairs_img{i}"][d[f"oc_used_idx_img{i}"]]
    order = np.argsort(oc_flat_index(rows))
    for k, col in (("occlusion_first", 0), ("occlusion_second", 1), ("occlusion_target", 2)):
      if not np.array_equal(it[k][i], rows[order, col]):
        bad.append(f"{k} img{i}")
    items.append((f"occlusion probs img{i}", float(np.abs(
        it["occlusion_probs"][i] - d[f"oc_probs_img{i}"][order]).max()), 1e-5))
  out = _checks("ocfusion samples", items, "")
  out.failures = [f"{b} differ" for b in bad] + out.failures
  return out


GRAD_SAFETY = 4.0  # K of the gradient bound (compare_gradients)


def gradient_bound(run: Iteration, path: str, tree_of=lambda t: t) -> tuple[np.ndarray, float]:
  """(elementwise bound / K, sigma) of our gradient at `path` (see `compare_gradients`)."""
  s = get_path(tree_of(run.summands), path).astype(np.float64)
  q = get_path(tree_of(run.squares), path).astype(np.float64)
  sigma = float(get_path(tree_of(run.noise), path))
  n_eff = np.where(q > 0, s * s / np.where(q > 0, q, 1.0), 1.0)
  return EPS32 * np.sqrt(n_eff) * s + sigma, sigma


def compare_gradients(d: Mapping[str, np.ndarray], run: Iteration, prefix: str = "grad/",
                      subtree: str | None = None, expected: int | None = None) -> Comparison:
  """Every recorded gradient tensor against ours, elementwise:

      |ours_j - theirs_j| <= K * (eps32 * sqrt(n_j) * S_j + sigma_T),   K = GRAD_SAFETY = 4.

  Why. Both gradients are float32 computations of the same sums in different orders (PyTorch
  on the recording CPU; XLA here, whose kernels - YNNPACK, Eigen, LLVM loops - pick their
  blocking from the CPU's vector ISA, so AVX2 and AVX-512 machines differ too). Their difference
  has two parts:
   1. the rounding of the gradient's own final sum g_j = sum_k a_jk (positions of a conv,
      ROIs of a dense layer, pixels of a GroupNorm, pairs of relation_val.bias, ...): in any
      order, with random rounding errors, |error| ~ eps32 * sqrt(n) * sum_k |a_jk| (Higham,
      "Accuracy and Stability of Numerical Algorithms", probabilistic form of the bound
      gamma_n sum |a_k|). S_j = sum_k |a_jk| and Q_j = sum_k a_jk^2 are computed by the same
      program as the gradient (rap_jax.parity.summands); n_j = S_j^2 / Q_j is the effective
      number of terms. This is the term that covers sums which cancel: the recorded
      relation_val.bias is 1.5e-8, float32 noise of terms that cancel exactly (every ranking
      pair adds dL/dz_front + dL/dz_back = 0), and a bias in front of a GroupNorm; their bound
      is relative to the summands, not to the result.
   2. the rounding noise of everything upstream of that sum (activations, cotangents), which
      reaches the terms a_jk amplified by the network: a GroupNorm's backward subtracts two
      nearly equal means, a layer4 kernel sums the cotangents of every head, a ReLU or 2x2
      max-pool gate at a near-tie flips. No a-priori bound is usable here (the fully absolute
      adjoint |J|^T ... |J|^T grows like sqrt(fan-in)^depth: 1e36 x |g| at layer2), so sigma_T
      is SAMPLED: the gradient is recomputed `noise_samples` (2) times with every parameter,
      FrozenBN constant and input pixel multiplied by (1 +- eps32), random signs. That puts a
      relative error of one rounding on every multiply-add term of every forward and backward
      convolution / matmul (the backward multiplies by the same weights), i.e. a sample of the
      noise of another float32 evaluation order, with all its amplification; sigma_T is the
      largest change of any element of tensor T. It is a property of the function at these
      weights, measured wherever the check runs, not a constant fitted to one CPU.
  K = 4 covers comparing two noisy evaluations (ours and theirs) with a 2-sample estimate of
  the noise, and formula-level float32 differences that no reordering models (e.g. the
  coordinates of the semantic loss's bilinear resizes, the CUDA-formula ROIAlign backward of
  the recording). Measured worst error / bound (scripts/train_parity.py, RAP; OCFusion 0.06) on
  an AVX2 CPU, each with its own sampled bound: 0.67 (semantic_final.0.bias) with XLA's default
  CPU kernels, the same with ONEDNN/DNNL_MAX_CPU_ISA=AVX2 OPENBLAS_CORETYPE=Haswell
  --xla_cpu_max_isa=AVX2 (no change on an AVX2 machine: XLA's YNNPACK kernels dispatch at run
  time), 0.65 with --xla_cpu_max_isa=SSE4_2, 0.60 with --xla_cpu_experimental_ynn_fusion_type=
  (YNNPACK off: Eigen / LLVM loops, another reduction order), 0.58 with that and
  --xla_cpu_enable_fast_math=true (reassociated reductions). These builds differ among
  themselves by up to 4e-4 x max|g| (semantic_seq0), as much as they differ from the
  recording (5.3e-4); the fixed 1e-4 relative tolerance used before failed on AVX2.
  """
  tree_of = (lambda t: t) if subtree is None else (lambda t: {"roi_heads": {subtree: t}})
  items, rel, bad = [], {}, []
  for key in sorted(k for k in d if k.startswith(prefix)):
    name = key[len(prefix):]
    path, ref = torch_to_ours(name, d[key])
    mine = get_path(tree_of(run.grads), path)
    if mine.shape != ref.shape:
      bad.append(f"{name} shape {mine.shape} != {ref.shape}")
      continue
    bound, _ = gradient_bound(run, path, tree_of)
    err = np.abs(mine.astype(np.float64) - ref)
    items.append((name, float((err / (GRAD_SAFETY * bound)).max()), 1.0))
    rel[name] = float(err.max() / max(np.abs(ref).max(), 1e-30))
  if expected is not None and len(items) + len(bad) != expected:
    bad.append(f"{len(items) + len(bad)} gradient tensors, expected {expected}")
  out = _checks("gradients", items, "")
  out.failures = bad + [f.replace("error", "error/bound", 1) for f in out.failures]
  out.values = rel
  # max rel over the tensors that are not float32 noise themselves (relation_val.bias: 1.5e-8)
  top = max((float(np.abs(d[k]).max()) for k in d if k.startswith(prefix)), default=0.0)
  regular = [rel[k[len(prefix):]] for k in d if k.startswith(prefix) and k[len(prefix):] in rel
             and float(np.abs(d[k]).max()) > 1e-6 * top]
  out.headline = max(regular, default=0.0)
  out.summary = (f"grads max rel {out.headline:.2g} "
                 f"(worst error/bound {out.ratio:.2g}: {out.worst})")
  return out


# --------------------------------------------------------------------------- optimizer


def optimizer_config(case: str):
  """(a) the small RAP config as shipped (stage 2, SOLVER.FINETUNE); (b) the small model with
  the solver of e2e_panoptic_rcnn_R_50_FPN_1x.yaml (stage 1, warmup, steps)."""
  from configs.fixtures import rap_small  # pylint: disable=import-outside-toplevel
  config = rap_small.get_config()
  if case == "b":
    t = config.train
    t.stage, t.base_lr, t.steps, t.max_iter, t.start_iter = 1, 0.02, (80000, 120000), 150000, 0
    t.warmup_iters, t.warmup_factor = 500, 1.0 / 3
  elif case != "a":
    raise ValueError(f"optimizer case must be 'a' or 'b', got {case!r}")
  return config


def fixture_grad_tree(d: Mapping[str, np.ndarray], params: Any) -> Any:
  """The recorded gradients in our params tree (zeros for the parameters without one)."""
  from rap_jax import checkpoint  # pylint: disable=import-outside-toplevel
  flat = {p: np.zeros_like(v) for p, v in checkpoint.flatten(params).items()}
  for key in d:
    if key.startswith("grad/"):
      path = our_param_path(key[len("grad/"):])
      if path not in flat:
        raise KeyError(f"{key}: no parameter {path}")
      flat[path] = torch_to_ours(key[len("grad/"):], d[key])[1]
  return checkpoint.unflatten(flat)


def optimizer_step(config, params: Any, grads: Any) -> dict[str, np.ndarray]:
  """One update of our optax chain from a fresh state: flat {path: value after}."""
  import optax  # pylint: disable=import-outside-toplevel

  from rap_jax import checkpoint  # pylint: disable=import-outside-toplevel
  from rap_jax import optim  # pylint: disable=import-outside-toplevel
  tx = optim.make_optimizer(config)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  return checkpoint.flatten(jax.device_get(optax.apply_updates(params, updates)))


def compare_optimizer_step(d: Mapping[str, np.ndarray], params: Any, case: str) -> Comparison:
  """The recorded gradients through our optimizer (first SGD step of case 'a' or 'b') against
  the original's parameters after `scheduler.step(); optimizer.step()`, elementwise within one
  float32 ulp of the tensor's largest magnitude (the rounding of the update can differ for
  elements much smaller than that) and within 2e-5 of the largest update (the README measures
  8.1e-6 / 1.6e-5 for its own float32 evaluation). values['exact']: bit-exact tensors; the
  frozen parameters must keep their values bit for bit (stem + layer1 in stage 1, everything
  outside roi_heads.relation in stage 2)."""
  from rap_jax import checkpoint  # pylint: disable=import-outside-toplevel
  config = optimizer_config(case)
  after = optimizer_step(config, params, fixture_grad_tree(d, params))
  before = checkpoint.flatten(params)
  items, bad, exact, ulps = [], [], 0, 0.0
  keys = [k for k in d if k.startswith(f"opt_{case}/")]
  for key in keys:
    torch_key = key[len(f"opt_{case}/"):]
    path = our_param_path(torch_key)
    want = torch_to_ours(torch_key, d[key])[1]
    got = np.asarray(after[path], np.float64)
    diff = float(np.abs(got - want).max())
    ulp = float(np.spacing(np.float32(max(np.abs(before[path]).max(), np.abs(want).max()))))
    update = float(np.abs(want.astype(np.float64) - before[path]).max())
    items.append((torch_key, diff, min(ulp, 2e-5 * update)))
    ulps = max(ulps, diff / ulp)
    exact += bool(np.array_equal(after[path], want))
  for path, value in before.items():
    frozen = path.startswith(("backbone/body/stem/", "backbone/body/layer1/"))
    if case == "a":
      frozen = not path.startswith("roi_heads/relation/")
    if frozen and not np.array_equal(after[path], value):
      bad.append(f"frozen {path} changed")
  out = _checks(f"optimizer step {case}", items, "")
  out.failures = bad + out.failures
  out.values["exact"] = exact
  out.values["tensors"] = len(keys)
  out.headline = ulps
  return out


# --------------------------------------------------------------------------------- all


def convert_checkpoint(pth: str | pathlib.Path, out_dir: str | pathlib.Path, kind: str) -> str:
  """`python -m convert` (in-process, quiet) of a fixture checkpoint with its fixture config."""
  import contextlib  # pylint: disable=import-outside-toplevel
  import io  # pylint: disable=import-outside-toplevel

  import configs.fixtures  # pylint: disable=import-outside-toplevel
  from convert import cli  # pylint: disable=import-outside-toplevel
  config = pathlib.Path(configs.fixtures.__file__).parent / f"{kind}_small.py"
  out = pathlib.Path(out_dir) / pathlib.Path(pth).stem
  log = io.StringIO()
  with contextlib.redirect_stdout(log):
    code = cli.main([str(pth), str(out), "--config", str(config)])
  if code != 0:
    raise RuntimeError(f"python -m convert failed on {pth} (exit {code}):\n{log.getvalue()}")
  return str(out)


def run_all(fixture: str | pathlib.Path, data_dir: str | pathlib.Path | None = None, *,
            rap_checkpoint: str | None = None, ocfusion_checkpoint: str | None = None,
            workdir: str | pathlib.Path | None = None, ocfusion: bool = True,
            noise_samples: int = 2) -> list[Comparison]:
  """Every comparison of the recorded iteration (scripts/train_parity.py).

  Checkpoints: converted directories, or converted here from the `.pth` files beside the
  fixture (CHECKPOINTS). `data_dir`: the batch is built by our input pipeline from that folder
  and compared with the original's input first; without it, from the npz.
  """
  import tempfile  # pylint: disable=import-outside-toplevel

  from configs.fixtures import ocfusion_small, rap_small  # pylint: disable=import-outside-toplevel
  from rap_jax import checkpoint  # pylint: disable=import-outside-toplevel
  fixture = pathlib.Path(fixture)
  d = load_fixture(fixture)
  with tempfile.TemporaryDirectory() as tmp:
    work = pathlib.Path(workdir or tmp)
    if rap_checkpoint is None:
      rap_checkpoint = convert_checkpoint(fixture.parent / CHECKPOINTS["rap"], work, "rap")
    if ocfusion and ocfusion_checkpoint is None:
      ocfusion_checkpoint = convert_checkpoint(fixture.parent / CHECKPOINTS["ocfusion"], work,
                                               "ocfusion")
    out = []
    if data_dir is not None:
      batch = pipeline_batch(data_dir, work)
      out.append(compare_batch(d, batch))
    else:
      batch = fixture_batch(d)
    rap_vars = checkpoint.load_variables(rap_checkpoint)
    run = run_iteration(rap_small.get_config(), rap_vars, batch, fixture_samples(d),
                        noise_samples=noise_samples)
    out += [compare_targets(d, run), compare_losses(d, run),
            compare_gradients(d, run, expected=NUM_GRADS)]
    if ocfusion:
      oc = run_iteration(ocfusion_small.get_config(), checkpoint.load_variables(
          ocfusion_checkpoint), batch, fixture_samples(d, ocfusion=True),
                         grad_subtree="relation", noise_samples=noise_samples)
      for c in (compare_ocfusion_samples(d, oc), compare_losses(d, oc, prefix="oc_"),
                compare_gradients(d, oc, "oc_grad/", "relation", expected=NUM_OC_GRADS)):
        c.name = f"ocfusion {c.name}"
        out.append(c)
    out += [compare_optimizer_step(d, rap_vars["params"], case) for case in ("a", "b")]
  return out


def summary_line(comparisons: Sequence[Comparison]) -> str:
  """The one-line report: what was compared, the worst errors, OK or FAIL (and why)."""
  by = {c.name: c for c in comparisons}
  parts = []
  if "inputs" in by:
    parts.append("inputs identical" if by["inputs"].ok else "inputs differ")
  if "targets" in by:
    parts.append(by["targets"].summary)
  losses = [c for c in comparisons if c.name.endswith("losses")]
  if losses:
    parts.append(f"losses max rel {max(c.headline for c in losses):.2g} (tol {LOSS_RTOL:g})")
  grads = [c for c in comparisons if c.name.endswith("gradients")]
  if grads:
    worst = max(grads, key=lambda c: c.ratio)
    parts.append(f"grads max rel {max(c.headline for c in grads):.2g}, worst error/bound "
                 f"{worst.ratio:.2g} ({worst.worst}; bound {GRAD_SAFETY:g} x "
                 f"(eps*sqrt(n)*sum|terms| + sampled float32 noise))")
  opt = [c for c in comparisons if c.name.startswith("optimizer step")]
  if opt:
    exact = ", ".join(f"{c.values['exact']}/{c.values['tensors']}" for c in opt)
    parts.append(f"optimizer steps a, b within {max(c.headline for c in opt):.2g} ulp "
                 f"(tol 1 ulp; bit-exact {exact} tensors)")
  failed = [c for c in comparisons if not c.ok]
  verdict = "OK" if not failed else "FAIL: " + " | ".join(c.message() for c in failed)
  return f"train_parity: {', '.join(parts)}: {verdict}"
