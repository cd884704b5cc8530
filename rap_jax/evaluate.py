"""Eval mode: a dataset split -> panoptic outputs, PQ, box/mask AP, relation accuracy.

  python -m rap_jax.main --config configs/rap_r50.py --mode eval --workdir DIR \
      --config.init_checkpoint=CKPT --config.data.data_dir=datasets/coco

Every image of `config.data.eval_split` goes through the same jitted step as predict mode
(network, post-processing, fusion) in padded fixed-size batches (no recompilation on the last
batch, nothing lost); PQ is accumulated in memory from the fused id maps (no PNG round trip).
Every fusion the model supports is scored on the same detections (`inference.supported_fusions`:
a RAP model with rap and heuristic, an OCFusion model with ocfusion and heuristic); the outputs
written are those of `config.fusion.method`.
Writes `DIR/eval/panoptic.json` + `DIR/eval/panoptic/<gt file name>` (COCO panoptic predictions),
`DIR/eval/instances.json` (COCO detection results), `DIR/metrics.json` and `DIR/metrics.txt`.

metrics.json (PQ as fractions in [0, 1]):
  {"panoptic": {"<fusion>": {"all": {pq, sq, rq, n}, "things": {...}, "stuff": {...}}, ...},
   "relation": {"accuracy", "score_order_accuracy", "pairs", "inferred", "images"} (relation models
               on a split with relations; accuracy None only when no pair was found),
   "bbox": {"AP", "AP50", ...}, "segm": {...},
   "pq": panopticapi's result of the configured fusion (All/Things/Stuff/per_class),
   "fusion", "fusions", "split", "num_images"}
Several hosts: each evaluates its slice of the split and writes `DIR/eval/part_<p>.json`;
process 0 merges them (the workdir must be shared).
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from rap_jax import checkpoint
from rap_jax import inference
from rap_jax import panoptic_io
from rap_jax import postprocess as pp
from rap_jax.data import categories
from rap_jax.metrics import coco_ap
from rap_jax.metrics import pq as pq_lib
from rap_jax.metrics import relation_accuracy
from rap_jax.modeling.panoptic_rcnn import abstract_variables


def _load_json(path: pathlib.Path) -> dict:
  if not path.is_file():
    raise FileNotFoundError(f"eval needs {path}")
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"malformed JSON in {path}: {e}") from e


def ground_truth(config) -> dict:
  """Panoptic and instance annotations of the eval split (COCO layout under data.data_dir)."""
  ann = pathlib.Path(config.data.data_dir) / "annotations"
  split = config.data.eval_split
  panoptic = _load_json(ann / f"panoptic_{split}.json")
  with_rel = ann / f"instances_{split}_with_relation.json"
  instances_path = with_rel if with_rel.is_file() else ann / f"instances_{split}.json"
  instances = _load_json(instances_path)
  by_image: dict[int, list] = {}
  for a in instances.get("annotations", []):
    by_image.setdefault(int(a["image_id"]), []).append(a)
  return dict(panoptic=panoptic, panoptic_folder=ann / f"panoptic_{split}",
              panoptic_by_image={int(a["image_id"]): a for a in panoptic["annotations"]},
              instances=instances, instances_path=instances_path, instances_by_image=by_image,
              has_relations=with_rel.is_file())


def gt_boxes_resized(anns: list[dict], original_hw, resized_hw) -> tuple[np.ndarray, np.ndarray]:
  """Non-crowd GT boxes in the resized frame as the original dataset builds them.

  COCO [x, y, w, h] -> (x, y, x + max(w-1, 0), y + max(h-1, 0)), BoxList.resize (float32 ratio
  multiplies), clip_to_image(remove_empty=True). Returns (boxes [G, 4], instance ids [G]).
  """
  anns = [a for a in anns if not a.get("iscrowd", 0)]
  if not anns:
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
  b = np.array([a["bbox"] for a in anns], np.float32)
  boxes = np.stack([b[:, 0], b[:, 1], b[:, 0] + np.maximum(b[:, 2] - 1, 0),
                    b[:, 1] + np.maximum(b[:, 3] - 1, 0)], 1)
  rh = np.float32(resized_hw[0] / original_hw[0])
  rw = np.float32(resized_hw[1] / original_hw[1])
  boxes = boxes * np.array([rw, rh, rw, rh], np.float32)
  h, w = resized_hw
  boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, w - 1)
  boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, h - 1)
  keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
  ids = np.array([a["id"] for a in anns], np.int64)
  return boxes[keep], ids[keep]


def _batch_from_eval(batch: dict, out_hw: tuple[int, int]) -> inference.Batch:
  info = batch["image_info"]
  ratios = pp.resize_ratios(info["original_hw"], info["resized_hw"])
  pad = np.asarray(info["is_padding"], bool)
  keys = [None if p else int(i) for p, i in zip(pad, info["image_id"])]
  return inference.Batch(np.asarray(batch["image"], np.float32),
                         np.asarray(info["padded_hw"], np.int32),
                         np.asarray(info["resized_hw"], np.int32),
                         np.asarray(info["original_hw"], np.int32), ratios, pad, keys, out_hw)


def _fusion_table(panoptic: dict) -> str:
  """PQ/SQ/RQ (in %) of every fusion side by side."""
  methods = list(panoptic)
  lines = [f"{'':8s}" + "".join(f"{m:>28s}" for m in methods),
           f"{'':8s}" + "".join(f"{'PQ':>10s}{'SQ':>6s}{'RQ':>6s}{'N':>6s}" for _ in methods)]
  for group in ("all", "things", "stuff"):
    row = f"{group:8s}"
    for m in methods:
      g = panoptic[m][group]
      row += f"{100 * g['pq']:10.2f}{100 * g['sq']:6.1f}{100 * g['rq']:6.1f}{g['n']:6d}"
    lines.append(row)
  return "\n".join(lines)


def _table(metrics: dict) -> str:
  lines = [pq_lib.format_table(metrics["pq"]), ""]
  if len(metrics.get("panoptic", {})) > 1:
    lines += ["PQ of each fusion on the same detections:", _fusion_table(metrics["panoptic"]), ""]
  for iou_type in ("bbox", "segm"):
    if iou_type in metrics:
      m = metrics[iou_type]
      lines.append(f"{iou_type:5s} AP {100 * m['AP']:6.2f}  AP50 {100 * m['AP50']:6.2f}  "
                   f"AP75 {100 * m['AP75']:6.2f}")
  rel = metrics.get("relation")
  if rel:
    fmt = lambda v: "n/a" if v is None else f"{100 * v:.2f}"
    lines.append(f"relation accuracy {fmt(rel['accuracy'])} (score order "
                 f"{fmt(rel['score_order_accuracy'])}) over {rel['pairs']} pairs")
  lines.append(f"images: {metrics['num_images']}")
  return "\n".join(lines)


def run(config, workdir: str, variables: Any = None) -> dict:
  """Evaluate on `config.data.eval_split`; returns the metrics dict (also written to disk)."""
  from rap_jax.data import coco, input_pipeline  # pylint: disable=import-outside-toplevel
  from rap_jax import predict  # pylint: disable=import-outside-toplevel
  fusions = inference.supported_fusions(config)
  if variables is None:
    variables = checkpoint.restore_variables(predict.find_checkpoint(config, workdir),
                                             abstract_variables(config))
  predictor = inference.Predictor(config, variables, extra_fusions=fusions[1:])
  gt = ground_truth(config)
  builder = coco.get_builder(config.data)
  ds, plan = input_pipeline.create_eval_dataset(config, builder)
  meta = input_pipeline.split_metadata(builder, config.data.eval_split)
  out_hw = inference.output_canvas(zip(meta["height"], meta["width"]),
                                   int(config.postprocess.output_size_multiple))
  out_dir = pathlib.Path(workdir) / "eval"
  png_dir = out_dir / "panoptic"
  ids = panoptic_io.IdGenerator()
  pq_accs = {m: pq_lib.PQAccumulator(gt["panoptic"]["categories"]) for m in fusions}
  method = config.fusion.method
  rel_acc = None
  if gt["has_relations"] and method in ("rap", "ocfusion"):
    rel_acc = relation_accuracy.RelationAccuracy(method, config.fusion.confidence_thr,
                                                 config.fusion.overlap_thr,
                                                 config.fusion.large_overlap_thr)
  annotations, detections = [], []
  proc = jax.process_index()
  with input_pipeline.as_numpy(ds) as it:
    for raw in tqdm(it, total=plan.num_steps, desc="eval", unit="batch", disable=proc != 0):
      batch = _batch_from_eval(raw, out_hw)
      result = jax.device_get(predictor(batch))
      fused = result.pop("fusion")
      others = result.pop("fusions", {method: fused})
      for i, image_id in enumerate(batch.keys):
        if image_id is None:
          continue
        h, w = (int(v) for v in batch.original_hw[i])
        gt_ann = gt["panoptic_by_image"].get(image_id)
        if gt_ann is None:
          raise KeyError(f"image {image_id} has no annotation in panoptic_"
                         f"{config.data.eval_split}.json")
        png, segments = panoptic_io.fusion_to_panoptic(fused[i], (h, w), ids)
        panoptic_io.write_panoptic_png(png_dir / gt_ann["file_name"], png)
        annotations.append({"image_id": image_id, "file_name": gt_ann["file_name"],
                            "segments_info": segments})
        gt_ids = pq_lib.read_panoptic_png(str(gt["panoptic_folder"] / gt_ann["file_name"]))
        pq_accs[method].add(image_id, gt_ids, gt_ann["segments_info"], panoptic_io.rgb2id(png),
                            segments)
        for m in fusions[1:]:  # the other fusions, scored only (ids need not replay the writer's)
          m_png, m_segments = panoptic_io.fusion_to_panoptic(others[m][i], (h, w),
                                                             panoptic_io.IdGenerator())
          pq_accs[m].add(image_id, gt_ids, gt_ann["segments_info"], panoptic_io.rgb2id(m_png),
                         m_segments)
        v = result["valid"][i]
        masks = result["masks"][i][v][:, :h, :w]
        detections += predict.instance_records(result, i, image_id, gt_ann["file_name"], (h, w),
                                               with_relation=False)
        if rel_acc is not None:
          gt_boxes, gt_inst = gt_boxes_resized(gt["instances_by_image"].get(image_id, []),
                                               (h, w), batch.resized_hw[i])
          anns = gt["instances_by_image"].get(image_id, [])
          rels = [(int(f), int(a["id"])) for a in anns for f in a.get("overlap", [])]
          rel_acc.add(boxes=result["boxes_resized"][i][v], scores=result["scores"][i][v],
                      labels=result["labels"][i][v], masks=masks, gt_boxes=gt_boxes,
                      gt_instance_ids=gt_inst, gt_relations=rels,
                      relation_vals=result["relation"][i][v] if "relation" in result else None,
                      occlusion=(result["occlusion"][i][np.ix_(v, v)] if "occlusion" in result
                                 else None))
  part = {"annotations": annotations, "detections": detections,
          "pq": {m: {k: getattr(acc.stat, k).tolist() for k in ("tp", "fp", "fn", "iou")}
                 for m, acc in pq_accs.items()},
          "pq_images": sorted(int(a["image_id"]) for a in annotations),
          "relation": None if rel_acc is None else rel_acc.counts}
  return _finish(config, workdir, out_dir, part, pq_accs[method].table, fusions, rel_acc, gt)


def _finish(config, workdir: str, out_dir: pathlib.Path, part: dict, table, fusions, rel_acc,
            gt) -> dict:
  """Merge the hosts' parts (file based) on process 0 and write every output."""
  out_dir.mkdir(parents=True, exist_ok=True)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    (out_dir / f"part_{jax.process_index()}.json").write_text(json.dumps(part))
    multihost_utils.sync_global_devices("eval parts written")
    if jax.process_index() != 0:
      return {}
    parts = [json.loads((out_dir / f"part_{p}.json").read_text())
             for p in range(jax.process_count())]
  else:
    parts = [part]
  stats = {m: pq_lib.PQStat.zeros(len(table)) for m in fusions}
  annotations, detections, rel_counts = [], [], None
  for p in parts:
    for m in fusions:
      stats[m] += pq_lib.PQStat(*(np.asarray(p["pq"][m][k], dt) for k, dt in
                                  (("tp", np.int64), ("fp", np.int64), ("fn", np.int64),
                                   ("iou", np.float64))))
    annotations += p["annotations"]
    detections += p["detections"]
    if p["relation"] is not None:
      rel_counts = ({k: rel_counts.get(k, 0) + v for k, v in p["relation"].items()}
                    if rel_counts else dict(p["relation"]))
  annotations.sort(key=lambda a: a["image_id"])
  panoptic_io.write_panoptic_json(out_dir / "panoptic.json", annotations)
  (out_dir / "instances.json").write_text(json.dumps(detections))
  results = {m: stats[m].results(table) for m in fusions}
  metrics: dict[str, Any] = {
      "panoptic": {m: {group.lower(): r[group] for group in ("All", "Things", "Stuff")}
                   for m, r in results.items()},
      "pq": results[config.fusion.method], "num_images": len(annotations),
      "split": config.data.eval_split, "fusion": config.fusion.method, "fusions": list(fusions)}
  if detections:
    metrics.update(coco_ap.coco_ap(str(gt["instances_path"]), detections))
  else:
    logging.warning("eval: no detections at all; box/mask AP are 0")
    metrics.update({t: {n: 0.0 for n in coco_ap.STAT_NAMES} for t in ("bbox", "segm")})
  if rel_acc is not None and rel_counts is not None:
    rel_acc.counts = rel_counts
    r = rel_acc.result()
    metrics["relation"] = {"accuracy": r["relation_acc"], "score_order_accuracy": r["score_acc"],
                           "pairs": r["num_pairs"], "inferred": r["num_inferred"],
                           "images": r["num_images"]}
  metrics["pq"]["per_class"] = {str(k): v for k, v in metrics["pq"]["per_class"].items()}
  table = _table(metrics)
  root = pathlib.Path(workdir)
  (root / "metrics.json").write_text(json.dumps(metrics, indent=1))
  (root / "metrics.txt").write_text(table + "\n")
  logging.info("eval metrics:\n%s", table)
  logging.info("eval: PQ %.3f over %d images -> %s", 100 * metrics["pq"]["All"]["pq"],
               metrics["num_images"], root / "metrics.json")
  return metrics
