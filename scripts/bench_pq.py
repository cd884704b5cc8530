"""Benchmark: our `pq_compute` vs hotcoco's vs the reference loop, on synthetic panoptic data.

    python scripts/bench_pq.py --images 5000 --output benchmarks/bench_pq.json

Generates (once; reused when --data-dir already holds a set of the same size) N synthetic GT /
prediction pairs of HxW with ~S segments (`rap_jax/reference/pq.py::write_dataset`: stuff bands,
things, thin lines, crowd, VOID, shifted / dropped / split predictions), then times each
implementation `--repeats` times in this process, round robin (wall clock, and CPU seconds of this
process, its threads and its finished worker processes), checks that all return the same numbers,
and prints medians and ratios to hotcoco. hotcoco runs on all CPUs (rayon; RAYON_NUM_THREADS
limits it), ours on `--workers` processes (default: all CPUs). On a machine shared with other
work, the CPU-time ratios are the steadier comparison.
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
from rap_jax.metrics import pq, pq_io  # noqa: E402
from rap_jax.reference import pq as ref  # noqa: E402


def timed(fn, *args, **kwargs):
  """(result, wall seconds, CPU seconds of this process, its threads and its finished children)."""
  t0, p0, c0 = time.perf_counter(), time.process_time(), os.times()
  with contextlib.redirect_stdout(io.StringIO()):
    result = fn(*args, **kwargs)
  c1 = os.times()
  cpu = time.process_time() - p0
  cpu += (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system)
  return result, time.perf_counter() - t0, cpu


def ratio(a: float, b: float) -> float:
  return a / b if b > 0 else float("nan")


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
  parser.add_argument("--no-single", action="store_true", help="skip ours with 1 worker")
  parser.add_argument("--reference-repeats", type=int, default=1,
                      help="the reference loop is slow: fewer repeats (0 = skip)")
  parser.add_argument("--output", default="benchmarks/bench_pq.json")
  args = parser.parse_args()

  paths = dataset(args)
  files = (paths["gt_json"], paths["pred_json"], paths["gt_folder"], paths["pred_folder"])
  workers = args.workers or pq.default_workers()
  ours = f"rap_jax ({workers} workers)"
  runs = {ours: (lambda: pq.pq_compute(*files, workers=workers), args.repeats)}
  if not args.no_single and workers != 1:
    runs["rap_jax (1 worker)"] = (lambda: pq.pq_compute(*files, workers=1), args.repeats)
  hotcoco_name = None
  try:
    from hotcoco.panoptic import pq_compute as hotcoco_pq
    import hotcoco
    # hotcoco runs images on rayon's pool: RAYON_NUM_THREADS, else one thread per CPU.
    threads = os.environ.get("RAYON_NUM_THREADS") or f"{pq.default_workers()} (all CPUs)"
    hotcoco_name = f"hotcoco {hotcoco.__version__}"
    runs[hotcoco_name] = (lambda: hotcoco_pq(*files), args.repeats)
  except ImportError:
    threads = None
    print("hotcoco not installed: skipped")
  if args.reference_repeats > 0:
    runs["reference loop"] = (lambda: ref.pq_compute(*files), args.reference_repeats)

  report = {"config": {**vars(args), "workers": workers, "cpus": pq.default_workers(),
                       "hotcoco_threads": threads,
                       "decoders": list(pq_io.process_reader().decoders),
                       "load_average_before": os.getloadavg()}, "runs": {}}
  # Round robin (A B C A B C ...): a change of machine load hits every implementation alike.
  walls: dict[str, list[float]] = {name: [] for name in runs}
  cpus: dict[str, list[float]] = {name: [] for name in runs}
  results = {}
  for r in range(max(repeats for _, repeats in runs.values())):
    for name, (fn, repeats) in runs.items():
      if r >= repeats:
        continue
      result, wall, cpu = timed(fn)
      walls[name].append(wall)
      cpus[name].append(cpu)
      results[name] = result
      print(f"{name:28s} wall {wall:8.2f} s   cpu {cpu:8.2f} s   load {os.getloadavg()[0]:4.1f}",
            flush=True)
  report["config"]["load_average_after"] = os.getloadavg()
  for name in runs:
    report["runs"][name] = {
        "wall_s": walls[name], "cpu_s": cpus[name],
        "median_wall_s": statistics.median(walls[name]),
        "median_cpu_s": statistics.median(cpus[name]),
        "ms_per_image_wall": 1e3 * statistics.median(walls[name]) / args.images,
        "ms_per_image_cpu": 1e3 * statistics.median(cpus[name]) / args.images,
        "PQ": results[name]["All"]["pq"],
        "max_abs_difference_to_ours": max_difference(
            results[ours], results[name], absent_b=-1.0 if name == hotcoco_name else 0.0)}
  base = report["runs"][hotcoco_name or ours]
  for r in report["runs"].values():
    r["wall_ratio_to_hotcoco" if hotcoco_name else "wall_ratio_to_ours"] = ratio(
        r["median_wall_s"], base["median_wall_s"])
    r["cpu_ratio_to_hotcoco" if hotcoco_name else "cpu_ratio_to_ours"] = ratio(
        r["median_cpu_s"], base["median_cpu_s"])

  print(f"\n{args.images} images of {args.height}x{args.width}, ~{args.segments} segments, "
        f"{pq.default_workers()} CPUs, load average {report['config']['load_average_before'][0]:.1f}"
        f" before, {report['config']['load_average_after'][0]:.1f} after; decoders "
        f"{'+'.join(report['config']['decoders'])}; hotcoco threads: {threads}")
  against = "hotcoco" if hotcoco_name else "ours"
  print(f"{'implementation':28s} {'median wall s':>14s} {'median cpu s':>13s} {'cpu ms/img':>11s} "
        f"{'wall/' + against:>13s} {'cpu/' + against:>12s} {'max |diff|':>11s}")
  for name, r in report["runs"].items():
    print(f"{name:28s} {r['median_wall_s']:14.2f} {r['median_cpu_s']:13.2f} "
          f"{r['ms_per_image_cpu']:11.2f} {r[f'wall_ratio_to_{against}']:13.2f} "
          f"{r[f'cpu_ratio_to_{against}']:12.2f} {r['max_abs_difference_to_ours']:11.1e}")
  print(pq.format_table(results[ours]))
  if args.output:
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
      json.dump(report, f, indent=1)
    print(f"wrote {args.output}")


if __name__ == "__main__":
  main()
