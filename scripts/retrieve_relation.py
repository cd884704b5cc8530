#!/usr/bin/env python
"""Mine occlusion relations from COCO instances vs panoptic annotations (retrieve_relation.py).

Writes ``{image_id: {back_instance_id: [front_instance_ids]}}`` as JSON (string keys), with the
original's matching rules and quirks (SPEC §7.1; the quirks are listed in
rap_jax/data/relations.py).
Prints the original's two numbers: images with a relation, relations.

  python scripts/retrieve_relation.py \
      --instances-json datasets/coco/annotations/instances_train2017.json \
      --panoptic-json datasets/coco/annotations/panoptic_train2017.json \
      --panoptic-folder datasets/coco/annotations/panoptic_train2017 \
      --output datasets/coco/annotations/relations_train2017.json
"""
from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from rap_jax.data import prep_io, relations  # noqa: E402


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--instances-json", required=True, help="COCO instances JSON (polygons)")
  p.add_argument("--panoptic-json", required=True, help="COCO panoptic JSON")
  p.add_argument("--panoptic-folder", required=True, help="folder of the panoptic PNGs")
  p.add_argument("--output", required=True, help="relations JSON to write")
  p.add_argument("--ratio", type=float, default=0.2,
                 help="a pair is judged if overlap/area > ratio for either instance (default 0.2)")
  p.add_argument("--workers", type=int, default=1, help="processes (output does not depend on it)")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  args = p.parse_args(argv)

  instances = prep_io.load_json(args.instances_json, "instances JSON", ("images", "annotations"))
  panoptic = prep_io.load_json(args.panoptic_json, "panoptic JSON",
                               ("images", "annotations", "categories"))
  rel = relations.retrieve_relations(instances, panoptic, args.panoptic_folder, ratio=args.ratio,
                                     workers=args.workers, progress=not args.no_progress)
  prep_io.dump_json(relations.relations_to_json(rel), args.output)
  covered, count = relations.count_relations(rel)
  print(covered)
  print(count)
  print(f"{len(rel)} images processed, {covered} with a relation, {count} relations "
        f"-> {args.output}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
