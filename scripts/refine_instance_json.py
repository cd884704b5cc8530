#!/usr/bin/env python
"""Add RAP's ``overlap`` field to a COCO instances JSON (refine_instance_json_file.py, SPEC §7.2).

Every annotation gets ``overlap`` = ids of the instances in front of it from the relations JSON of
``scripts/retrieve_relation.py`` (``[]`` if none, crowd included). The JSON is re-dumped with
Python's default separators, byte-compatible with the original's output.

  python scripts/refine_instance_json.py \
      --instances-json datasets/coco/annotations/instances_train2017.json \
      --relations datasets/coco/annotations/relations_train2017.json \
      --output datasets/coco/annotations/instances_train2017_with_relation.json
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
  p.add_argument("--instances-json", required=True, help="COCO instances JSON")
  p.add_argument("--relations", required=True, help="relations JSON from retrieve_relation.py")
  p.add_argument("--output", required=True, help="instances JSON with `overlap` to write")
  args = p.parse_args(argv)

  instances = prep_io.load_json(args.instances_json, "instances JSON", ("annotations",))
  rel_json = prep_io.load_json(args.relations, "relations JSON")
  try:
    rel = relations.relations_from_json(rel_json)
  except (AttributeError, TypeError, ValueError) as e:
    raise ValueError(
        f"{args.relations}: expected {{image_id: {{back_id: [front_ids]}}}}: {e}") from None
  relations.add_overlap_field(instances, rel)
  prep_io.dump_json(instances, args.output)
  n = sum(1 for a in instances["annotations"] if a["overlap"])
  print(f"{len(instances['annotations'])} annotations, {n} with a non-empty overlap "
        f"-> {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
