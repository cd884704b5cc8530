"""scripts/bench_input.py runs end to end on a tiny set and writes its JSON."""
import importlib.util
import json
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_bench_input_writes_images_per_second(tmp_path):
  spec = importlib.util.spec_from_file_location("bench_input", REPO / "scripts" / "bench_input.py")
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  out = tmp_path / "bench_input.json"
  result = bench.main(["--output", str(out), "--num-images", "2", "--batch-size", "1",
                       "--warmup", "0", "--steps", "2", "--image-size", "64", "96",
                       "--mask-format", "packed", "none", "--workdir", str(tmp_path / "w")])
  saved = json.loads(out.read_text())
  assert saved == result and [r["mask_format"] for r in saved["runs"]] == ["packed", "none"]
  assert saved["images_per_second"] == saved["runs"][0]["images_per_second"] > 0
  # 64x96 -> 800x1200 in the landscape canvas: image + semantic + packed masks (100 slots)
  assert saved["runs"][0]["batch_megabytes"] > saved["runs"][1]["batch_megabytes"] > 12
