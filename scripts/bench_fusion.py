"""Benchmark: jitted batched panoptic fusion vs the numpy reference loop, per image.

  python scripts/bench_fusion.py              # 800x1216, 100 instances, batch 4, all 3 methods
  python scripts/bench_fusion.py --methods rap --runs 9 --output /tmp/bench_rap.json

Synthetic but realistic inputs (`make_inputs`): instance masks are filled ellipses and boxes with
log-uniform sizes (16-480 px), a third of them near-duplicates of another detection (same class,
jittered box) so that every branch of the fusion runs; scores in [--min-score, 1] (by default all
instances pass the confidence threshold, the worst case for both versions); the semantic map is a
blocky random stuff map with the instance pixels set to the thing channel.

Timing: jitted = one call of the batched fusion (inputs already on the device, as in predict
mode) on --batch images after a warm-up (compile) call, `block_until_ready`, divided by the batch
size; reference = `rap_jax.reference.fusion` on each image of the same batch. Runs are interleaved
(jit, jit with mask windows, reference, jit, ...) so that all see the same machine load; medians
of wall-clock and of process CPU time are reported. "with mask windows" passes each mask's paste
window (`fuse(mask_windows=...)`, known to predict mode), which skips the pass over the masks. Both results are checked to be identical before timing. The result
is written to --output (JSON) and one summary line is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from rap_jax.data import categories as cats  # noqa: E402
from rap_jax.ops import fusion as fusion_ops  # noqa: E402
from rap_jax.reference import fusion as fusion_ref  # noqa: E402


def make_inputs(rng: np.random.Generator, num_instances: int, height: int, width: int,
                min_score: float) -> dict:
  """One synthetic image's fusion inputs (detection order), see the module docstring."""
  yy, xx = np.mgrid[:height, :width]
  masks = np.zeros((num_instances, height, width), bool)
  boxes = np.zeros((num_instances, 4))
  windows = np.zeros((num_instances, 4), np.int32)
  labels = np.zeros(num_instances, np.int32)
  thing_ids = np.asarray(cats.THING_IDS[:12], np.int32)
  for i in range(num_instances):
    if i > 0 and rng.random() < 1 / 3:                 # near-duplicate of an earlier detection
      j = rng.integers(i)
      x0, y0, x1, y1 = boxes[j]
      jitter = 0.15 * np.array([x1 - x0, y1 - y0, x1 - x0, y1 - y0]) * rng.uniform(-1, 1, 4)
      x0, y0, x1, y1 = boxes[j] + jitter
      labels[i] = labels[j] if rng.random() < 0.7 else rng.choice(thing_ids)
    else:
      w, h = np.exp(rng.uniform(np.log(16), np.log(480), 2))
      cx, cy = rng.uniform(0, width), rng.uniform(0, height)
      x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
      labels[i] = rng.choice(thing_ids)
    boxes[i] = x0, y0, x1, y1
    # the paste window (y0, x0, y1, x1), half-open, as mask pasting knows it
    windows[i] = (max(int(np.floor(y0)), 0), max(int(np.floor(x0)), 0),
                  min(int(np.ceil(y1)) + 1, height), min(int(np.ceil(x1)) + 1, width))
    if rng.random() < 0.5:                             # ellipse
      cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
      rx, ry = max((x1 - x0) / 2, 1), max((y1 - y0) / 2, 1)
      masks[i] = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
    else:                                              # box
      masks[i] = (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
  scores = rng.uniform(min_score, 1.0, num_instances).astype(np.float32)
  relation = rng.normal(2.0, 2.0, num_instances).astype(np.float32)
  occlusion = rng.random((num_instances, num_instances)) < 0.5
  # blocky stuff map: 16x19 random channels upsampled, things on top
  coarse = rng.integers(1, cats.NUM_STUFF_CLASSES + 1, (height // 50 + 1, width // 64 + 1))
  semantic = np.kron(coarse, np.ones((50, 64), np.int32))[:height, :width].astype(np.int32)
  semantic[masks.any(0)] = cats.SEMANTIC_THING
  return dict(masks=masks, scores=scores, labels=labels, relation=relation,
              occlusion=occlusion, semantic=semantic, windows=windows)


def _timed(fn) -> tuple[float, float]:
  """(wall seconds, process CPU seconds) of one call."""
  wall, cpu = time.perf_counter(), time.process_time()
  fn()
  return time.perf_counter() - wall, time.process_time() - cpu


def bench_method(method: str, images: list[dict], batch: dict, args, tile) -> dict:
  """Time one fusion method: jitted (generic and with mask windows) vs reference, interleaved."""
  thresholds = dict(confidence_thr=0.5, overlap_thr=0.5, stuff_area_limit=4096)
  if method == "rap":
    thresholds["large_overlap_thr"] = 0.5

  def run_jit(windows=None):
    out = fusion_ops.fuse(method, batch["masks"], batch["scores"], batch["labels"],
                          batch["semantic"], relation=batch["relation"],
                          occlusion=batch["occlusion"], mask_windows=windows, tile=tile,
                          batched=True, batch_mode=args.batch_mode, **thresholds)
    return jax.block_until_ready(out)

  def run_jit_windows():
    return run_jit(batch["windows"])

  def run_ref():
    return [fusion_ref.fuse_reference(method, im["masks"], im["scores"], im["labels"],
                                      im["semantic"], relation=im["relation"],
                                      occlusion=im["occlusion"], **thresholds)
            for im in images]

  start = time.perf_counter()
  result = run_jit()                                   # warm-up: compile + first run
  compile_s = time.perf_counter() - start
  result_windows = run_jit_windows()
  refs = run_ref()
  for b, ref in enumerate(refs):                       # same segments before timing anything
    for got in (result[b], result_windows[b]):
      n = int(got.num_segments)
      same = (np.array_equal(np.asarray(got.segment_map), ref.segment_map())
              and np.asarray(got.segment_category[:n]).tolist()
              == [s["category_id"] for s in ref.segments_info])
      if not same:
        raise SystemExit(f"{method}: jitted fusion differs from the reference on image {b}")
  times = {"jit": [], "jit_windows": [], "ref": []}
  for _ in range(args.runs):                           # interleaved: same load for all three
    times["jit"].append(_timed(run_jit))
    times["jit_windows"].append(_timed(run_jit_windows))
    times["ref"].append(_timed(run_ref))
  median = {name: [statistics.median(t[k] for t in ts) / args.batch for k in (0, 1)]
            for name, ts in times.items()}
  (jit_wall, jit_cpu), (win_wall, win_cpu), (ref_wall, ref_cpu) = (
      median["jit"], median["jit_windows"], median["ref"])
  return {
      "method": method,
      "segments_mean": float(np.mean([len(r.segments_info) for r in refs])),
      "jit_ms_per_image": round(1e3 * jit_wall, 1),
      "reference_ms_per_image": round(1e3 * ref_wall, 1),
      "speedup": round(ref_wall / jit_wall, 1),
      "jit_cpu_ms_per_image": round(1e3 * jit_cpu, 1),
      "reference_cpu_ms_per_image": round(1e3 * ref_cpu, 1),
      "speedup_cpu_time": round(ref_cpu / jit_cpu, 1),
      "jit_with_mask_windows_ms_per_image": round(1e3 * win_wall, 1),
      "speedup_with_mask_windows": round(ref_wall / win_wall, 1),
      "jit_with_mask_windows_cpu_ms_per_image": round(1e3 * win_cpu, 1),
      "compile_and_first_run_s": round(compile_s, 2),
  }


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--methods", default="rap,ocfusion,heuristic",
                      help="comma-separated subset of " + ",".join(fusion_ops.METHODS))
  parser.add_argument("--height", type=int, default=800)
  parser.add_argument("--width", type=int, default=1216)
  parser.add_argument("--instances", type=int, default=100)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--runs", type=int, default=5, help="timed rounds (jit + reference each)")
  parser.add_argument("--batch-mode", default=None, choices=("vmap", "map"),
                      help="batching of the jitted fusion (default: map on CPU, vmap elsewhere)")
  parser.add_argument("--min-score", type=float, default=0.5,
                      help="scores are uniform in [min-score, 1]; the threshold is 0.5")
  parser.add_argument("--tile", default="auto",
                      help="'auto' (backend default), 'none' (one tile) or HxW, e.g. 64x128")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--output", default="benchmarks/bench_fusion.json")
  args = parser.parse_args(argv)

  methods = [m.strip() for m in args.methods.split(",") if m.strip()]
  for method in methods:
    if method not in fusion_ops.METHODS:
      parser.error(f"unknown method {method!r}; choose from {fusion_ops.METHODS}")
  if args.tile == "auto":
    tile = fusion_ops.default_tile()
  elif args.tile == "none":
    tile = None
  else:
    tile = tuple(int(v) for v in args.tile.lower().split("x"))

  rng = np.random.default_rng(args.seed)
  images = [make_inputs(rng, args.instances, args.height, args.width, args.min_score)
            for _ in range(args.batch)]
  batch = {k: jax.device_put(np.stack([im[k] for im in images])) for k in images[0]}
  results = [bench_method(method, images, batch, args, tile) for method in methods]
  record = {
      "config": {
          "canvas": [args.height, args.width],
          "instances": args.instances,
          "instances_above_threshold_mean": float(np.mean(
              [(im["scores"] >= 0.5).sum() for im in images])),
          "batch": args.batch,
          "batch_mode": args.batch_mode or fusion_ops.default_batch_mode(),
          "tile": None if tile is None else
          list(fusion_ops.tile_shape(args.height, args.width, tile)),
          "runs": args.runs,
          "seed": args.seed,
          "backend": jax.default_backend(),
          "device": str(jax.devices()[0].device_kind),
          "cpu_count": os.cpu_count(),
          "machine": platform.processor() or platform.machine(),
          "load_average_1min_end": round(os.getloadavg()[0], 2),
          "jax": jax.__version__,
          "numpy": np.__version__,
          "command": "python scripts/bench_fusion.py " + " ".join(
              argv if argv is not None else sys.argv[1:]),
      },
      "results": results,
  }
  out = pathlib.Path(args.output)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(record, indent=2) + "\n")
  for r in results:
    print(f"fusion {r['method']} {args.height}x{args.width} K={args.instances} batch={args.batch} "
          f"[{record['config']['backend']}]: jitted {r['jit_ms_per_image']} ms/image, reference "
          f"{r['reference_ms_per_image']} ms/image, speedup {r['speedup']}x (CPU time "
          f"{r['speedup_cpu_time']}x); with mask windows {r['jit_with_mask_windows_ms_per_image']}"
          f" ms/image, {r['speedup_with_mask_windows']}x")
  print(f"-> {out}")
  return record


if __name__ == "__main__":
  main()
