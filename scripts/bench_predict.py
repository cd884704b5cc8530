"""Per-image inference time (network + post-processing + fusion, one jitted step) against the
original's CPU timings in ../shared/fixtures/timings_cpu.json.

  python scripts/bench_predict.py --checkpoint runs/rap_small_ckpt --output benchmarks/bench_predict.json

Converts nothing itself: pass the small RAP fixture converted with
`python -m convert ../shared/fixtures/rap_small_legacy.pth runs/rap_small_ckpt --config configs/fixtures/rap_small.py`.
Times each fixture photo alone (batch 1, its own canvas, as the original ran), after a warm-up
call that compiles; reports median/min/max over --runs and the ratio to the original's total.
Same work on both sides: the original's total includes pasting, RLE-encoding every mask and
writing the panoptic PNG, so ours includes pre-processing, the jitted step (network,
post-processing, fusion), the panoptic id conversion + PNG write and the RLE instance records.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--checkpoint", required=True, help="converted rap_small checkpoint dir")
  parser.add_argument("--fixtures", default=str(REPO.parent / "shared" / "fixtures"))
  parser.add_argument("--runs", type=int, default=7)
  parser.add_argument("--output", default="benchmarks/bench_predict.json")
  args = parser.parse_args()

  import jax  # pylint: disable=import-outside-toplevel
  from configs.fixtures import rap_small  # pylint: disable=import-outside-toplevel
  import tempfile  # pylint: disable=import-outside-toplevel
  from rap_jax import inference  # pylint: disable=import-outside-toplevel
  from rap_jax import panoptic_io  # pylint: disable=import-outside-toplevel
  from rap_jax import predict  # pylint: disable=import-outside-toplevel
  from rap_jax.data import transforms as T  # pylint: disable=import-outside-toplevel

  fixtures = pathlib.Path(args.fixtures)
  original = json.loads((fixtures / "timings_cpu.json").read_text())["small_model"]
  config = rap_small.get_config()
  predictor = inference.Predictor.from_checkpoint(config, args.checkpoint)
  rows = {}
  scratch = tempfile.mkdtemp(prefix="bench_predict_")
  for name in ("astronaut", "coffee"):
    rgb = T.load_image(fixtures / f"image_{name}.png")
    times = []
    for run in range(args.runs + 1):
      t0 = time.perf_counter()
      item = inference.prepare_image(rgb, config.input, name)  # host pre-processing included
      batch = inference.make_batch([item], 1, item.padded_hw,
                                   config.postprocess.output_size_multiple)
      result = jax.device_get(predictor(batch))
      fused = result.pop("fusion")
      hw = tuple(int(v) for v in batch.original_hw[0])
      png, _ = panoptic_io.fusion_to_panoptic(fused[0], hw, panoptic_io.IdGenerator())
      panoptic_io.write_panoptic_png(pathlib.Path(scratch) / f"{name}.png", png)
      predict.instance_records(result, 0, 1, name, hw, with_relation=True)  # RLE of every mask
      if run:  # run 0 compiles
        times.append(time.perf_counter() - t0)
    ours = statistics.median(times)
    theirs = original[name]["total_s"]
    rows[name] = {"ours_median_s": ours, "ours_min_s": min(times), "ours_max_s": max(times),
                  "original_total_s": theirs, "speedup": theirs / ours}
    print(f"{name:10s} ours {ours * 1e3:7.1f} ms (min {min(times) * 1e3:.1f}, max "
          f"{max(times) * 1e3:.1f})  original {theirs * 1e3:7.1f} ms  -> {theirs / ours:.2f}x")
  out = {"device": str(jax.devices()[0]), "runs": args.runs, "images": rows,
         "what": "per image, same work on both sides: pre-processing + network + "
                 "post-processing (pasting, RLE of every mask) + fusion + panoptic PNG write "
                 "(ours); model + post + fusion incl. PNG write (original, PyTorch CPU, 2 "
                 "threads)"}
  path = pathlib.Path(args.output)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(out, indent=1))
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
