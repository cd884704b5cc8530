#!/usr/bin/env python
"""Semantic label PNGs from COCO panoptic annotations (RAP's panoptic2semantic_segmentation*.py).

``--style pfpn`` (training labels): 0 unlabeled, 1..53 stuff, 54 every thing pixel (crowd included).
``--style panopticapi``: 0 unlabeled, 1..133 = 1-based index of the category in panopticapi's
categories json. 8-bit single-channel PNGs named like the panoptic PNGs (SPEC §7.3).

  python scripts/panoptic2semantic.py \
      --panoptic-json datasets/coco/annotations/panoptic_train2017.json \
      --panoptic-folder datasets/coco/annotations/panoptic_train2017 \
      --output-folder datasets/coco/annotations/semantic_train2017 --style pfpn
"""
from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from rap_jax.data import prep, prep_io  # noqa: E402


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--panoptic-json", required=True, help="COCO panoptic JSON")
  p.add_argument("--panoptic-folder", required=True, help="folder of the panoptic PNGs")
  p.add_argument("--output-folder", required=True, help="folder for the semantic PNGs")
  p.add_argument("--style", choices=prep.STYLES, default="pfpn",
                 help="pfpn: 1..53 stuff + 54 things (training); panopticapi: 1..133")
  p.add_argument("--workers", type=int, default=1, help="processes")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  args = p.parse_args(argv)

  panoptic = prep_io.load_json(args.panoptic_json, "panoptic JSON", ("annotations",))
  written = prep.panoptic_to_semantic(panoptic, args.panoptic_folder, args.output_folder,
                                      style=args.style, workers=args.workers,
                                      progress=not args.no_progress)
  print(f"{len(written)} {args.style} label PNGs -> {args.output_folder}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
