"""`python -m convert SRC.pth OUT_DIR [--config FILE] [-v] [--force]`.

Reads an original checkpoint without torch (pth_reader), maps it through the name table and hooks
(converter), optionally checks it against our model built from `--config`, prints the mapping and
the leftovers on both sides, and, only if nothing is left unexplained, writes an orbax variables
checkpoint (rap_jax.checkpoint) that `--config.init_checkpoint=OUT_DIR` loads.
Exit status: 0 written; 1 any problem (nothing written); 2 bad command line.
"""
from __future__ import annotations

import argparse
import collections
import importlib
import importlib.util
import os
import pathlib
import sys
from typing import Any, Sequence, TextIO

from convert import converter
from convert import pth_reader
from convert import source
from rap_jax import checkpoint

_DESCRIPTION = """\
Convert an original RAP / maskrcnn-benchmark checkpoint (.pth, legacy or zip format, bare
state_dict or {'model': ...} wrapper, with or without the DDP 'module.' prefix) into a rap_jax
orbax variables checkpoint. torch is not needed and no code from the file is run.

Output: one line per converted tensor (torch key -> our path, shape before -> after, hook), the
checked cell anchors, and the leftovers on both sides: torch keys that no rule maps, and (with
--config) model leaves the checkpoint does not provide. With -v/--summary the per-tensor lines
are replaced by one line per module group and hook; problems are always listed in full.
FrozenBatchNorm buffers are copied verbatim (not folded) into the 'buffers' collection.
A stage-1 (Panoptic FPN) checkpoint converted with a RAP/OCFusion --config is accepted: the
relation head is reported as freshly initialised when the checkpoint starts a finetune.
Exit status: 0 written; 1 any problem (nothing is written); 2 bad command line.
"""


def load_config(spec: str) -> Any:
  """Loads a `get_config()` config file like ml_collections.config_flags: 'FILE[:ARG]'."""
  path, arg = spec, None
  if not os.path.isfile(spec) and ":" in spec:
    path, arg = spec.rsplit(":", 1)
  file = pathlib.Path(path).resolve()
  if not file.is_file():
    raise FileNotFoundError(f"config file not found: {path}")
  # Import as a package module (configs.fixtures.rap_small) so that its own imports work.
  parts, root = [file.stem], file.parent
  while (root / "__init__.py").is_file():
    parts.insert(0, root.name)
    root = root.parent
  if len(parts) > 1:
    if str(root) not in sys.path:
      sys.path.insert(0, str(root))
    module = importlib.import_module(".".join(parts))
  else:
    spec_ = importlib.util.spec_from_file_location(file.stem, file)
    module = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(module)
  return module.get_config() if arg is None else module.get_config(arg)


def expected_variables(config: Any) -> dict:
  """Abstract variables (jax.ShapeDtypeStruct leaves) of our model for `config`."""
  try:
    from rap_jax.modeling import panoptic_rcnn
    build = panoptic_rcnn.abstract_variables
  except (ImportError, AttributeError) as e:
    raise RuntimeError("--config needs rap_jax.modeling.panoptic_rcnn.abstract_variables(config) "
                       f"(the model), which is not available: {e}") from e
  return build(config)


def _anchor_spec(config: Any | None) -> converter.AnchorSpec:
  if config is None:
    return converter.AnchorSpec()
  rpn = config.model.rpn
  return converter.AnchorSpec(tuple(rpn.anchor_sizes), tuple(rpn.anchor_strides),
                              tuple(rpn.aspect_ratios))


def _group(key: str) -> str:
  """'backbone.body.layer1', 'backbone.fpn', 'rpn.head', 'roi_heads.box', 'semantic_head'."""
  parts = key.split(".")
  depth = 3 if key.startswith("backbone.body.") else 1 if parts[0] == "semantic_head" else 2
  return ".".join(parts[:depth])


def _print_mapping(conv: converter.Conversion, summary: bool, out: TextIO) -> None:
  if not summary:
    width = max((len(m.key) for m in conv.mapped), default=0)
    for m in conv.mapped:
      print(f"  {m.key:<{width}} -> {m.path}  {m.shape_in} -> {m.shape_out}  {m.kind}", file=out)
    return
  groups: dict[tuple[str, str], int] = collections.Counter(
      (_group(m.key), m.kind) for m in conv.mapped)
  for (group, kind), n in groups.items():
    print(f"  {group + '.*':<40} {kind:<15} {n:5d} tensors", file=out)


def _check_against_model(conv: converter.Conversion, config: Any
                         ) -> tuple[checkpoint.TreeDiff, list[tuple[str, tuple[int, ...]]]]:
  """Diff against the model of `config`; a missing relation head of a stage-1 checkpoint in a
  stage-2 config is returned separately as 'fresh' (not an error)."""
  diff = checkpoint.diff_trees(conv.variables, expected_variables(config))
  fresh: list[tuple[str, tuple[int, ...]]] = []
  relation = checkpoint.RELATION_HEAD
  has_relation = any(p.startswith(relation + "/") for p in conv.flat)
  if config.model.roi_heads.relation.kind != "none" and not has_relation:
    fresh = [(p, s) for p, s in diff.missing if p.startswith(relation + "/")]
    diff.missing = [(p, s) for p, s in diff.missing if not p.startswith(relation + "/")]
  return diff, fresh


def _metadata(args: argparse.Namespace, src: source.SourceCheckpoint,
              conv: converter.Conversion, fresh: list) -> dict:
  return {
      "source": os.path.abspath(src.path),
      "format": src.format,
      "wrapped_in_model_entry": src.wrapped,
      "ignored_entries": list(src.ignored_entries),
      "iteration": src.iteration,
      "stripped_prefix": src.stripped_prefix,
      "config": os.path.abspath(args.config) if args.config else None,
      "num_tensors": len(conv.mapped),
      "num_elements": int(sum(int(_prod(m.shape_out)) for m in conv.mapped)),
      "frozen_batchnorm": "buffers kept verbatim (weight, bias, running_mean, running_var); "
                          "the model folds them at run time without epsilon (SPEC §2.2)",
      "anchors_checked": conv.anchors_checked,
      "fresh_when_loaded": [p for p, _ in fresh],
      "mapping": [{"torch": m.key, "path": m.path, "hook": m.kind, "shape_in": list(m.shape_in),
                   "shape_out": list(m.shape_out), "dtype_in": m.dtype_in} for m in conv.mapped],
  }


def _prod(shape: Sequence[int]) -> int:
  n = 1
  for d in shape:
    n *= d
  return n


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
  """The command; returns the exit status. Prints to `out`/`err` (default stdout/stderr)."""
  out = sys.stdout if out is None else out
  err = sys.stderr if err is None else err
  out_dir = pathlib.Path(args.output_dir)
  if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not args.force:
    print(f"error: {out_dir} exists and is not an empty directory (use --force)", file=err)
    return 1
  try:
    config = load_config(args.config) if args.config else None
  except Exception as e:  # a broken config file: report it, do not trace back
    print(f"error: cannot load config {args.config}: {type(e).__name__}: {e}", file=err)
    return 1

  print(f"reading {args.checkpoint}", file=out)
  try:
    src = source.read_checkpoint(args.checkpoint)
  except pth_reader.PthFormatError as e:
    print(f"error: {e}", file=err)
    return 1
  print(f"  {src.format} format, {len(src.state_dict)} tensors"
        f"{' in the model entry' if src.wrapped else ' (bare state_dict)'}"
        f"{f', iteration {src.iteration}' if src.iteration is not None else ''}"
        f"{f', prefix {src.stripped_prefix!r} stripped' if src.stripped_prefix else ''}"
        f"{f'; ignored entries: {list(src.ignored_entries)}' if src.ignored_entries else ''}",
        file=out)

  conv = converter.convert_state_dict(src.state_dict, anchor_spec=_anchor_spec(config))
  print(f"mapping ({len(conv.mapped)} tensors):", file=out)
  _print_mapping(conv, args.summary, out)
  print(f"cell anchors checked and not stored: {len(conv.anchors_checked)}", file=out)

  problems = [f"  no rule for torch key: {k} {s}" for k, s in conv.unmatched]
  problems += [f"  {e}" for e in conv.errors]
  fresh: list = []
  if config is not None:
    try:
      diff, fresh = _check_against_model(conv, config)
    except RuntimeError as e:
      print(f"error: {e}", file=err)
      return 1
    problems += diff.lines()
  print(f"leftover torch keys: {len(conv.unmatched) or 'none'}", file=out)
  if config is None:
    print("leftover model leaves: not checked (pass --config to check against our model)",
          file=out)
  else:
    print(f"leftover model leaves: {len(diff.missing) or 'none'}", file=out)
  if fresh:
    print(f"{checkpoint.RELATION_HEAD}: {len(fresh)} tensors not in this (stage-1) checkpoint; "
          "they are freshly initialised when it starts a stage-2 finetune", file=out)
  if problems:
    print(f"error: {len(problems)} problems, nothing written:", file=err)
    print("\n".join(problems), file=err)
    return 1

  print(f"writing {out_dir}", file=out)
  checkpoint.save_variables(out_dir, conv.variables, metadata=_metadata(args, src, conv, fresh),
                            force=args.force)
  print(f"done: {len(conv.mapped)} tensors ({_count(conv, 'params')} params, "
        f"{_count(conv, 'buffers')} buffers) -> {out_dir}", file=out)
  return 0


def _count(conv: converter.Conversion, collection: str) -> int:
  return sum(m.path.startswith(collection + "/") for m in conv.mapped)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m convert", description=_DESCRIPTION,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("checkpoint", help="original checkpoint (.pth)")
  parser.add_argument("output_dir", help="output directory (orbax checkpoint + conversion.json)")
  parser.add_argument("--config", help="our config file (FILE[:ARG]); the converted tree must "
                      "match the model it builds, leaf for leaf and shape for shape")
  parser.add_argument("-v", "--summary", action="store_true",
                      help="one line per module group and hook instead of one per tensor")
  parser.add_argument("--force", action="store_true",
                      help="write into a non-empty OUTPUT_DIR (replaces its variables/)")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  return run(parse_args(argv))
