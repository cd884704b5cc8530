"""Benchmark: our `pq_compute` vs hotcoco's vs the reference loop, on synthetic panoptic data.

    python scripts/bench_pq.py --images 5000 --output benchmarks/bench_pq.json

Generates (once; reused when --data-dir already holds a set of the same size) N synthetic GT /
prediction pairs of HxW with ~S segments (`rap_jax/reference/pq.py::write_dataset`: stuff bands,
things, thin lines, crowd, VOID, shifted / dropped / split predictions), then times each
implementation `--repeats` times in this process (wall clock and CPU seconds including worker
processes), checks that all return the same numbers, and prints medians and ratios.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rap_jax.data.categories import categories_json  # noqa: E402
from rap_jax.metrics import pq  # noqa: E402
from rap_jax.reference import pq as ref  # noqa: E402


def timed(fn, *args, **kwargs):
  """(result, wall seconds, CPU seconds of this process and its finished children)."""
  t0, c0 = time.perf_counter(), os.times()
  with contextlib.redirect_stdout(io.StringIO()):
    result = fn(*args, **kwargs)
  c1 = os.times()
  cpu = (c1.user - c0.user) + (c1.system - c0.system)
  cpu += (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system)
  return result, time.perf_counter() - t0, cpu


def max_difference(a: dict, b: dict, absent_b: float = 0.0) -> float:
  worst = 0.0
  for g in ("All", "Things", "Stuff"):
    if a[g]["n"] != b[g]["n"]:
      return float("inf")
    worst = max(worst, *(abs(a[g][k] - b[g][k]) for k in ("pq", "sq", "rq")))
  for cid, v in a["per_class"].items():
    o = b["per_class"][cid]
    if o["pq"] == absent_b and o["sq"] == absent_b and o["rq"] == absent_b:
      o = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    worst = max(worst, *(abs(v[k] - o[k]) for k in ("pq", "sq", "rq")))
  return worst


def dataset(args) -> dict[str, str]:
  folder = args.data_dir or os.path.join(tempfile.gettempdir(),
                                         f"bench_pq_{args.images}_{args.height}x{args.width}")
  meta_path = os.path.join(folder, "meta.json")
  meta = {"images": args.images, "height": args.height, "width": args.width,
          "segments": args.segments, "seed": args.seed}
  paths = {"gt_json": os.path.join(folder, "gt.json"), "pred_json": os.path.join(folder, "pred.json"),
           "gt_folder": os.path.join(folder, "gt"), "pred_folder": os.path.join(folder, "pred")}
  if os.path.exists(meta_path) and json.load(open(meta_path)) == meta:
    print(f"reusing {folder}")
    return paths
  print(f"writing {args.images} synthetic image pairs to {folder} ...", flush=True)
  t0 = time.perf_counter()
  paths = ref.write_dataset(folder, args.images, categories_json(), seed=args.seed,
                            height=args.height, width=args.width, num_segments=args.segments,
                            workers=pq.default_workers())
  json.dump(meta, open(meta_path, "w"))
  print(f"  done in {time.perf_counter() - t0:.1f} s")
  return paths


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--images", type=int, default=5000)
  parser.add_argument("--height", type=int, default=480)
  parser.add_argument("--width", type=int, default=640)
  parser.add_argument("--segments", type=int, default=20)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--data-dir", default=None, help="where the synthetic set lives (reused)")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--workers", type=int, default=None, help="ours: processes (default all)")
  parser.add_argument("--reference-repeats", type=int, default=1,
                      help="the reference loop is slow: fewer repeats (0 = skip)")
  parser.add_argument("--output", default="benchmarks/bench_pq.json")
  args = parser.parse_args()

  paths = dataset(args)
  files = (paths["gt_json"], paths["pred_json"], paths["gt_folder"], paths["pred_folder"])
  workers = args.workers or pq.default_workers()
  runs = {
      f"rap_jax ({workers} workers)": (lambda: pq.pq_compute(*files, workers=workers), args.repeats),
      "rap_jax (1 worker)": (lambda: pq.pq_compute(*files, workers=1), args.repeats),
  }
  try:
    from hotcoco.panoptic import pq_compute as hotcoco_pq
    import hotcoco
    runs[f"hotcoco {hotcoco.__version__}"] = (lambda: hotcoco_pq(*files), args.repeats)
  except ImportError:
    print("hotcoco not installed: skipped")
  if args.reference_repeats > 0:
    runs["reference loop"] = (lambda: ref.pq_compute(*files), args.reference_repeats)

  report = {"config": {**vars(args), "workers": workers, "cpus": pq.default_workers(),
                       "load_average": os.getloadavg()}, "runs": {}}
  results = {}
  for name, (fn, repeats) in runs.items():
    walls, cpus = [], []
    for _ in range(repeats):
      result, wall, cpu = timed(fn)
      walls.append(wall)
      cpus.append(cpu)
      print(f"{name:28s} wall {wall:8.2f} s   cpu {cpu:8.2f} s", flush=True)
    results[name] = result
    report["runs"][name] = {"wall_s": walls, "cpu_s": cpus, "median_wall_s": statistics.median(walls),
                            "median_cpu_s": statistics.median(cpus),
                            "ms_per_image_wall": 1e3 * statistics.median(walls) / args.images,
                            "PQ": result["All"]["pq"]}
  ours = next(iter(results))
  for name, result in results.items():
    report["runs"][name]["max_abs_difference_to_ours"] = max_difference(
        results[ours], result, absent_b=-1.0 if name.startswith("hotcoco") else 0.0)

  base = report["runs"][ours]["median_wall_s"]
  print(f"\n{args.images} images of {args.height}x{args.width}, ~{args.segments} segments, "
        f"{pq.default_workers()} CPUs, load average {os.getloadavg()[0]:.1f}")
  print(f"{'implementation':28s} {'median wall s':>14s} {'median cpu s':>13s} {'ms/image':>9s} "
        f"{'wall / ours':>12s} {'max |diff|':>11s}")
  for name, r in report["runs"].items():
    r["wall_ratio_to_ours"] = r["median_wall_s"] / base
    print(f"{name:28s} {r['median_wall_s']:14.2f} {r['median_cpu_s']:13.2f} "
          f"{r['ms_per_image_wall']:9.2f} {r['wall_ratio_to_ours']:12.2f} "
          f"{r['max_abs_difference_to_ours']:11.1e}")
  print(pq.format_table(results[ours]))
  if args.output:
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
      json.dump(report, f, indent=1)
    print(f"wrote {args.output}")


if __name__ == "__main__":
  main()
