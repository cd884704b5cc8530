#!/usr/bin/env python
"""Write the built-in synthetic COCO-style panoptic dataset (rap_jax/data/synthetic.py).

Same layout as the original's datasets/coco (images/<split>2017, annotations/instances_*.json,
instances_*_with_relation.json, panoptic_*.json + PNGs, semantic_* PNGs) plus the generator's ground
truth (relations_*.json, depths_*.json). Deterministic: the same arguments give identical files, for
any --workers. Skips the work if <data-dir>/synthetic_config.json records the same arguments and the
files are complete, unless --force.

  python scripts/make_synthetic.py --data-dir datasets/synthetic --num-train 200 --num-val 50
"""
from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from rap_jax.data import format_check, prep_io, synthetic  # noqa: E402


def main(argv: list[str] | None = None) -> int:
  d = synthetic.SyntheticConfig()
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data-dir", required=True, help="output folder")
  p.add_argument("--num-train", type=int, default=d.num_train)
  p.add_argument("--num-val", type=int, default=d.num_val)
  p.add_argument("--image-size", type=int, nargs="+", default=list(d.image_size),
                 help="S (square) or H W (default 256)")
  p.add_argument("--seed", type=int, default=d.seed)
  p.add_argument("--min-instances", type=int, default=d.min_instances)
  p.add_argument("--max-instances", type=int, default=d.max_instances)
  p.add_argument("--crowd-prob", type=float, default=d.crowd_prob, help="crowd region per image")
  p.add_argument("--void-prob", type=float, default=d.void_prob, help="unlabeled strip per image")
  p.add_argument("--workers", type=int, default=1, help="processes (files do not depend on it)")
  p.add_argument("--force", action="store_true", help="regenerate even if complete")
  p.add_argument("--check", action="store_true", help="run the COCO format checks afterwards")
  args = p.parse_args(argv)
  if len(args.image_size) not in (1, 2):
    p.error("--image-size takes S or H W")
  size = args.image_size * 2 if len(args.image_size) == 1 else args.image_size
  config = dict(num_train=args.num_train, num_val=args.num_val, image_size=tuple(size),
                seed=args.seed, min_instances=args.min_instances, max_instances=args.max_instances,
                crowd_prob=args.crowd_prob, void_prob=args.void_prob)

  root = pathlib.Path(args.data_dir)
  if not args.force and synthetic.is_complete(root, **config):
    print(f"{root}: complete, same configuration; nothing to do (--force to regenerate)")
    return 0
  for sub in ("images", "annotations"):  # no stale files from another configuration
    shutil.rmtree(root / sub, ignore_errors=True)
  summary = synthetic.generate(root, workers=args.workers, progress=True, **config)
  print(json.dumps(summary, indent=1))
  if args.check:
    errors = []
    for split in ("train2017", "val2017"):
      files = synthetic.split_files(split)
      errors += format_check.check_panoptic(prep_io.load_json(root / files["panoptic"]),
                                            root / f"annotations/panoptic_{split}")
      errors += format_check.check_instances(prep_io.load_json(root / files["with_relation"]))
    print("format check:", "OK" if not errors else "\n".join(errors))
    return 1 if errors else 0
  return 0


if __name__ == "__main__":
  sys.exit(main())
