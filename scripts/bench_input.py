"""Images per second of the training input pipeline (rap_jax.data.input_pipeline).

Builds a small dataset in the COCO layout (the built-in synthetic set, 480x640 images like most of
COCO, when `rap_jax.data.synthetic.generate` exists, else copies of the two training-fixture
photographs with their annotations), prepares it with the tfds builder, runs the training
pipeline with the default config (min size 800, max 1333, canvases, max_instances 100) for
`--steps` batches after
`--warmup` batches (once per `--mask-format`), and writes the rates to `--output` (JSON) and
stdout. `cpu_seconds_per_image` (process CPU time per image) is the number to trust on a machine
shared with other jobs; images per second also depends on their load.

  python scripts/bench_input.py --output benchmarks/bench_input.json
  taskset -c 0,1 python scripts/bench_input.py ...   # pin to 2 cores
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shutil
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from configs import common  # noqa: E402
from rap_jax.data import coco  # noqa: E402
from rap_jax.data import input_pipeline  # noqa: E402

FIXTURE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "fixtures" / \
    "train_data_astronaut_coffee"


def replicate_fixture(raw: pathlib.Path, num_images: int, split: str = "train2017") -> str:
  """`num_images` copies of the fixture photographs (annotations, relations, semantic labels)."""
  src = json.loads((FIXTURE / "instances_train_with_relation.json").read_text())
  (raw / "images" / split).mkdir(parents=True)
  (raw / "annotations" / f"semantic_{split}").mkdir(parents=True)
  images, anns = [], []
  for k in range(num_images):
    im = dict(src["images"][k % len(src["images"])])
    name = f"{k + 1:012d}.png"
    shutil.copy(FIXTURE / "images" / im["file_name"], raw / "images" / split / name)
    shutil.copy(FIXTURE / "semantic_train2017" / im["file_name"],
                raw / "annotations" / f"semantic_{split}" / name)
    offset = 1000 * (k + 1)
    for a in src["annotations"]:
      if a["image_id"] == im["id"]:
        anns.append(dict(a, id=a["id"] + offset, image_id=k + 1,
                         overlap=[o + offset for o in a["overlap"]]))
    images.append(dict(im, id=k + 1, file_name=name))
  (raw / "annotations" / f"instances_{split}_with_relation.json").write_text(json.dumps(
      dict(images=images, annotations=anns, categories=src["categories"])))
  return "fixture_copies"


def make_raw(raw: pathlib.Path, num_images: int, image_size: tuple[int, int]) -> str:
  try:
    from rap_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  except ImportError:
    return replicate_fixture(raw, num_images)
  synthetic.generate(raw, num_train=num_images, num_val=0, image_size=image_size,
                     workers=len(os.sched_getaffinity(0)))
  return f"synthetic {image_size[0]}x{image_size[1]}"


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--output", default="benchmarks/bench_input.json")
  parser.add_argument("--num-images", type=int, default=32)
  parser.add_argument("--batch-size", type=int, default=8, help="per-host batch")
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--mask-format", nargs="+", default=list(input_pipeline.MASK_FORMATS),
                      choices=input_pipeline.MASK_FORMATS,
                      help="one run each; the first is the headline images_per_second")
  parser.add_argument("--image-resize", default="tf", choices=("tf", "pil"))
  parser.add_argument("--image-size", type=int, nargs=2, default=(480, 640),
                      help="synthetic image (height, width); COCO's typical 480x640")
  parser.add_argument("--workdir", default="", help="default: a temporary folder")
  args = parser.parse_args(argv)
  tfds.disable_progress_bar()

  workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="bench_input_"))
  raw = workdir / "raw"
  if raw.exists():
    shutil.rmtree(raw)
  source = make_raw(raw, args.num_images, tuple(args.image_size))
  config = common.get_config()
  config.data.data_dir = str(raw)
  config.data.name = "bench"
  t0 = time.perf_counter()
  builder = coco.get_builder(config.data, splits=[config.data.train_split])
  prepare_s = time.perf_counter() - t0

  runs = []
  for mask_format in args.mask_format:
    ds = input_pipeline.make_train_dataset(
        builder, split=config.data.train_split, input_config=config.input,
        batch_size=args.batch_size, max_instances=config.data.max_instances, seed=0,
        shuffle_buffer=config.data.shuffle_buffer, process_index=0, process_count=1,
        mask_format=mask_format, image_resize=args.image_resize)
    with input_pipeline.as_numpy(ds) as it:
      for _ in range(args.warmup):
        next(it)
      t0, c0 = time.perf_counter(), time.process_time()
      for _ in range(args.steps):
        batch = next(it)
      elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    images = args.steps * args.batch_size
    runs.append(dict(
        mask_format=mask_format,
        images_per_second=round(images / elapsed, 2),
        seconds_per_batch=round(elapsed / args.steps, 4),
        # CPU seconds of the whole process per image: robust to other load on shared cores
        cpu_seconds_per_image=round(cpu / images, 4),
        batch_megabytes=round(sum(v.nbytes for v in tf.nest.flatten(batch)) / 2**20, 1),
        load_average_1min=round(os.getloadavg()[0], 2)))
    print(json.dumps(runs[-1]))
  result = dict(
      images_per_second=runs[0]["images_per_second"], runs=runs,
      batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
      image_resize=args.image_resize, dataset=source, num_images=args.num_images,
      prepare_seconds=round(prepare_s, 2), min_size_train=list(config.input.min_size_train),
      max_size_train=config.input.max_size_train, max_instances=config.data.max_instances,
      cpus_available=len(os.sched_getaffinity(0)),
      machine=platform.processor() or platform.machine(), tensorflow=tf.__version__,
      command="python " + " ".join(sys.argv))
  out = pathlib.Path(args.output)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2) + "\n")
  print(f"images/s (mask_format {runs[0]['mask_format']}): {result['images_per_second']} "
        f"-> {out}")
  if not args.workdir:
    shutil.rmtree(workdir, ignore_errors=True)
  return result


if __name__ == "__main__":
  main()
