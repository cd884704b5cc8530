"""Original state_dict -> our variables tree, by the name table and the per-kind hooks.

`convert_state_dict` never stops at the first problem: it collects every unmatched key, bad shape,
incomplete layer and anchor mismatch so that one run shows all of them. It copies nothing (hooks
return numpy views); `rap_jax.checkpoint.save_variables` makes the arrays contiguous when writing.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Mapping, Sequence

import numpy as np

from convert import hooks as hooks_lib
from convert import name_table
from rap_jax import checkpoint
from rap_jax.modeling import anchors as anchors_lib  # numpy only: the model's own cell anchors


@dataclasses.dataclass(frozen=True)
class Mapped:
  """One converted tensor."""
  key: str                        # torch key (prefix stripped)
  path: str                       # our '/'-path
  kind: str                       # hook name
  shape_in: tuple[int, ...]
  shape_out: tuple[int, ...]
  dtype_in: str


@dataclasses.dataclass(frozen=True)
class AnchorSpec:
  """The RPN anchor config the checkpoint's cell anchors must equal (SPEC §2.4 defaults).

  `rpn.anchor_generator.cell_anchors.{0..4}` are a pure function of it, so they are not carried
  into our tree: the model recomputes them (rap_jax.modeling.anchors), and the converter requires
  the checkpoint's buffers to equal that recomputation exactly.
  """
  sizes: Sequence[float] = (32, 64, 128, 256, 512)
  strides: Sequence[int] = (4, 8, 16, 32, 64)
  ratios: Sequence[float] = (0.5, 1.0, 2.0)


@dataclasses.dataclass
class Conversion:
  """Result of `convert_state_dict`; `ok` is False if anything was left unexplained."""
  variables: dict                                     # {'params': ..., 'buffers': ...}
  mapped: list[Mapped]
  anchors_checked: list[str]                          # cell-anchor keys verified and dropped
  unmatched: list[tuple[str, tuple[int, ...]]]        # torch keys no rule / leaf matched
  errors: list[str]                                   # shapes, dtypes, anchors, incomplete layers

  @property
  def ok(self) -> bool:
    return not (self.unmatched or self.errors)

  @property
  def flat(self) -> dict[str, np.ndarray]:
    return checkpoint.flatten(self.variables)


def _check_anchors(key: str, leaf: str, tensor: np.ndarray, spec: AnchorSpec) -> str | None:
  """None if cell anchor level `leaf` equals the recomputed one, else an error message."""
  expected = anchors_lib.all_cell_anchors(spec.strides, spec.sizes, spec.ratios)
  if not leaf.isdigit() or int(leaf) >= len(expected):
    return f"{key}: no anchor level {leaf!r} (the config has {len(expected)} levels)"
  want = expected[int(leaf)]
  if tensor.shape != want.shape or not np.array_equal(tensor.astype(np.float32), want):
    return (f"{key}: cell anchors differ from the recomputed Detectron anchors (SPEC §2.4) for "
            f"stride {spec.strides[int(leaf)]}, size {spec.sizes[int(leaf)]}, ratios "
            f"{tuple(spec.ratios)}:\n    checkpoint {np.asarray(tensor).tolist()}\n"
            f"    expected   {want.tolist()}")
  return None


def _as_float32(key: str, tensor: np.ndarray, errors: list[str]) -> np.ndarray | None:
  if not np.issubdtype(tensor.dtype, np.floating) and tensor.dtype.name != "bfloat16":
    errors.append(f"{key}: dtype {tensor.dtype} is not a floating-point type")
    return None
  return tensor if tensor.dtype == np.float32 else tensor.astype(np.float32)


def convert_state_dict(state_dict: Mapping[str, np.ndarray], *,
                       anchor_spec: AnchorSpec = AnchorSpec()) -> Conversion:
  """Maps every key of an original state_dict (no `module.` prefix) onto our variables tree.

  Args:
    state_dict: torch key -> numpy array in PyTorch layout (any float dtype; cast to float32).
    anchor_spec: what `rpn.anchor_generator.cell_anchors.*` must equal.
  Returns:
    A `Conversion`: the tree (float32, our layouts) plus everything the report needs.
  """
  flat: dict[str, np.ndarray] = {}
  mapped: list[Mapped] = []
  anchors_checked: list[str] = []
  unmatched: list[tuple[str, tuple[int, ...]]] = []
  errors: list[str] = []
  seen_leaves: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
  # module -> {leaf: ndim}: the GroupNorm variants reuse FrozenBN / conv names (name_table.py).
  module_leaves: dict[str, dict[str, int]] = collections.defaultdict(dict)
  for key, tensor in state_dict.items():
    module, leaf = name_table.split_key(key)
    module_leaves[module][leaf] = np.ndim(tensor)

  for key, tensor in state_dict.items():
    module, leaf = name_table.split_key(key)
    kind = name_table.kind_of(module, module_leaves[module])
    if kind == "anchors":
      problem = _check_anchors(key, leaf, np.asarray(tensor), anchor_spec)
      if problem:
        errors.append(problem)
      else:
        anchors_checked.append(key)
      continue
    hook = hooks_lib.HOOKS.get(kind) if kind else None
    if hook is None or leaf not in hook.leaves:
      unmatched.append((key, tuple(tensor.shape)))
      continue
    seen_leaves[(module, kind)].add(leaf)
    value = _as_float32(key, tensor, errors)
    if value is None:
      continue
    try:
      our_leaf, value = hook.apply(leaf, value)
    except hooks_lib.HookError as e:
      errors.append(f"{key} ({kind}): {e}")
      continue
    path = name_table.our_path(hook.collection, module, our_leaf)
    if path in flat:
      errors.append(f"{key}: a second tensor for {path}")
      continue
    flat[path] = value
    mapped.append(Mapped(key, path, kind, tuple(tensor.shape), tuple(value.shape),
                         str(tensor.dtype)))

  for (module, kind), leaves in seen_leaves.items():
    absent = [leaf for leaf in hooks_lib.HOOKS[kind].required if leaf not in leaves]
    if absent:
      errors.append(f"{module} ({kind}): incomplete layer, missing {', '.join(absent)}")
  return Conversion(checkpoint.unflatten(flat), mapped, anchors_checked, unmatched, errors)
