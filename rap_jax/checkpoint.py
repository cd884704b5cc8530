"""Variables checkpoints (orbax) and merging loaded weights into a model's variables (SPEC §9).

A variables checkpoint is a directory

  <dir>/variables/       orbax PyTree checkpoint of {'params': ..., 'buffers': ...}, float32 numpy
  <dir>/conversion.json  provenance, written by `python -m convert` (source file, format, mapping)

that `config.init_checkpoint` points to. Trees are nested dicts; a leaf is named by its
'/'-joined path, e.g. 'params/backbone/body/stem/conv1/kernel' or
'buffers/backbone/body/stem/bn1/running_var' (the FrozenBatchNorm buffers are kept verbatim,
see convert/hooks.py).

A training run keeps its checkpoints (SPEC §9.0: the original's `model_%07d.pth` with optimizer,
scheduler and iteration) in an orbax `CheckpointManager` under `<workdir>/checkpoints`:

  <workdir>/checkpoints/<step>/variables/  {'params', 'buffers'}: the same layout as above, so a
                                           step directory is itself a variables checkpoint
  <workdir>/checkpoints/<step>/opt_state/  optax state (momentum buffers, update counts)
  <workdir>/checkpoints/<step>/meta/       JSON: step, stage, data seed, losses at that step

`latest_checkpoint(workdir)` is the newest step directory; `resolve_checkpoint` accepts a
variables checkpoint, a step directory or a training workdir (its newest step).

Unlike the original (which silently keeps the init of unmatched keys, SPEC §9.1), loading is
strict: `merge_variables` raises on missing, unexpected and mis-shaped leaves, listing all of
them, except for reference subtrees the caller explicitly allows to stay freshly initialised (the
relation head when a stage-1 Panoptic FPN checkpoint starts a RAP/OCFusion finetune), which are
logged.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Iterable, Mapping, Sequence

from absl import logging
import jax
import numpy as np

VARIABLES_DIR = "variables"
METADATA_FILE = "conversion.json"
# The subtree that is new in stage 2 (SPEC §6.2): allowed to be fresh when a stage-1 checkpoint
# initialises a RAP or OCFusion model.
RELATION_HEAD = "params/roi_heads/relation"


class CheckpointMismatchError(ValueError):
  """Loaded and expected trees disagree; the message lists every difference."""


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Nested dicts -> {'a/b/c': leaf}, keys in sorted order."""
  flat: dict[str, Any] = {}
  for key in sorted(tree):
    path = f"{prefix}{key}"
    value = tree[key]
    if isinstance(value, Mapping):
      flat.update(flatten(value, path + "/"))
    else:
      flat[path] = value
  return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """{'a/b/c': leaf} -> nested dicts."""
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    *parents, leaf = path.split("/")
    node = tree
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def _shape(x: Any) -> tuple[int, ...]:
  return tuple(np.shape(x)) if not hasattr(x, "shape") else tuple(x.shape)


def _under(path: str, prefixes: Iterable[str]) -> str | None:
  for prefix in prefixes:
    prefix = prefix.rstrip("/")
    if path == prefix or path.startswith(prefix + "/"):
      return prefix
  return None


@dataclasses.dataclass
class TreeDiff:
  """Leaves of `loaded` vs `reference`: what is missing, unexpected or of another shape."""
  missing: list[tuple[str, tuple[int, ...]]]                        # in reference only
  unexpected: list[tuple[str, tuple[int, ...]]]                     # in loaded only
  mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]    # (path, loaded, reference)

  @property
  def ok(self) -> bool:
    return not (self.missing or self.unexpected or self.mismatched)

  def lines(self) -> list[str]:
    out = [f"  missing (in the model, not in the checkpoint): {p} {s}" for p, s in self.missing]
    out += [f"  unexpected (in the checkpoint, not in the model): {p} {s}"
            for p, s in self.unexpected]
    out += [f"  shape mismatch: {p} checkpoint {a} vs model {b}" for p, a, b in self.mismatched]
    return out


def diff_trees(loaded: Mapping[str, Any], reference: Mapping[str, Any]) -> TreeDiff:
  """Compares leaf paths and shapes; `reference` leaves may be arrays or jax.ShapeDtypeStructs."""
  a, b = flatten(loaded), flatten(reference)
  return TreeDiff(
      missing=[(p, _shape(b[p])) for p in b if p not in a],
      unexpected=[(p, _shape(a[p])) for p in a if p not in b],
      mismatched=[(p, _shape(a[p]), _shape(b[p])) for p in a
                  if p in b and _shape(a[p]) != _shape(b[p])])


def merge_variables(loaded: Mapping[str, Any], reference: Mapping[str, Any], *,
                    allow_fresh: Sequence[str] = ()) -> dict[str, Any]:
  """Returns `reference` with every leaf replaced by the loaded one (cast to the reference dtype).

  Args:
    loaded: variables from a checkpoint (nested dicts of arrays).
    reference: the model's freshly initialised variables (arrays) or its abstract variables
      (jax.ShapeDtypeStruct); defines the expected paths, shapes and dtypes.
    allow_fresh: path prefixes (e.g. RELATION_HEAD) whose leaves may be absent from `loaded`;
      they keep their value from `reference` and are logged per prefix.

  Raises:
    CheckpointMismatchError: listing all missing (outside `allow_fresh`), unexpected and
      mis-shaped leaves, or fresh leaves whose reference is abstract (nothing to keep).
  """
  diff = diff_trees(loaded, reference)
  fresh = [(p, s) for p, s in diff.missing if _under(p, allow_fresh)]
  diff.missing = [(p, s) for p, s in diff.missing if not _under(p, allow_fresh)]
  ref_flat = flatten(reference)
  abstract = [p for p, _ in fresh if isinstance(ref_flat[p], jax.ShapeDtypeStruct)]
  if not diff.ok or abstract:
    lines = diff.lines() + [f"  cannot keep a fresh init of abstract leaf {p}" for p in abstract]
    raise CheckpointMismatchError(
        f"checkpoint does not match the model ({len(lines)} problems):\n" + "\n".join(lines))
  counts: dict[str, int] = {}
  for path, _ in fresh:
    prefix = _under(path, allow_fresh)
    counts[prefix] = counts.get(prefix, 0) + 1
  for prefix, n in counts.items():
    logging.warning("%s: %d tensors not in checkpoint, freshly initialised", prefix, n)
  merged = dict(ref_flat)
  for path, value in flatten(loaded).items():
    dtype = getattr(ref_flat[path], "dtype", None)
    merged[path] = value if dtype is None or value.dtype == dtype else value.astype(dtype)
  out = unflatten(merged)
  for collection, tree in reference.items():  # an empty collection (an all-GroupNorm model's
    if isinstance(tree, Mapping) and not flatten(tree):  # 'buffers') has no leaf to carry it
      out.setdefault(collection, {})
  return out


def save_variables(directory: str | os.PathLike, variables: Mapping[str, Any], *,
                   metadata: Mapping[str, Any] | None = None, force: bool = False) -> pathlib.Path:
  """Writes `variables` (as contiguous numpy arrays) and optional JSON `metadata` to `directory`."""
  import orbax.checkpoint as ocp  # imported here: flatten/merge users need no orbax

  directory = pathlib.Path(directory).absolute()
  directory.mkdir(parents=True, exist_ok=True)
  tree = unflatten({p: np.ascontiguousarray(np.asarray(v)) for p, v in flatten(variables).items()})
  with ocp.PyTreeCheckpointer() as checkpointer:
    checkpointer.save(directory / VARIABLES_DIR, tree, force=force)
  if metadata is not None:
    (directory / METADATA_FILE).write_text(json.dumps(metadata, indent=1) + "\n")
  return directory


def _orbax_dir(directory: pathlib.Path) -> pathlib.Path:
  if not directory.exists():
    raise FileNotFoundError(f"checkpoint directory not found: {directory}")
  for candidate in (directory / VARIABLES_DIR, directory):
    if (candidate / "_CHECKPOINT_METADATA").is_file() or (candidate / "_METADATA").is_file():
      return candidate
  raise ValueError(
      f"not a variables checkpoint: {directory} (expected {directory / VARIABLES_DIR}/ as written "
      "by `python -m convert`, or an orbax checkpoint directory)")


def load_variables(directory: str | os.PathLike) -> dict[str, Any]:
  """Reads a variables checkpoint -> nested dicts of numpy arrays ({'params', 'buffers'})."""
  import orbax.checkpoint as ocp

  path = _orbax_dir(pathlib.Path(directory).absolute())
  with ocp.PyTreeCheckpointer() as checkpointer:
    meta = checkpointer.metadata(path).item_metadata.tree
    # tree_map keeps empty subtrees (an all-GroupNorm model's empty 'buffers'), which a
    # flatten/unflatten round trip would drop: orbax wants the restore args of the same structure.
    restore_args = jax.tree_util.tree_map(
        lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
    return checkpointer.restore(path, restore_args=restore_args)


def load_metadata(directory: str | os.PathLike) -> dict[str, Any] | None:
  """The converter's `conversion.json` of a checkpoint directory, None if there is none."""
  path = pathlib.Path(directory) / METADATA_FILE
  return json.loads(path.read_text()) if path.is_file() else None


def restore_variables(directory: str | os.PathLike, reference: Mapping[str, Any], *,
                      allow_fresh: Sequence[str] = ()) -> dict[str, Any]:
  """`merge_variables(load_variables(directory), reference, allow_fresh=...)`."""
  return merge_variables(load_variables(directory), reference, allow_fresh=allow_fresh)


# ------------------------------------------------------------------ training checkpoints (§9.0)

CHECKPOINTS_DIR = "checkpoints"
TRAIN_ITEMS = ("variables", "opt_state", "meta")


def checkpoints_dir(workdir: str | os.PathLike) -> pathlib.Path:
  """Where a training run in `workdir` keeps its CheckpointManager."""
  return pathlib.Path(workdir).absolute() / CHECKPOINTS_DIR


def train_checkpoint_manager(workdir: str | os.PathLike, *, max_to_keep: int = 3,
                             keep_steps: Sequence[int] = ()):
  """An orbax CheckpointManager for training state in `<workdir>/checkpoints`.

  Keeps the `max_to_keep` newest checkpoints plus every step in `keep_steps` (the last step of
  each training stage, the original's `model_final.pth`). Saves are asynchronous: call
  `wait_until_finished()` before reading them.
  """
  import orbax.checkpoint as ocp
  from orbax.checkpoint import checkpoint_managers as cm

  policies = [cm.preservation_policy.LatestN(max_to_keep)]
  if keep_steps:
    policies.append(cm.preservation_policy.CustomSteps(steps=[int(s) for s in keep_steps]))
  options = ocp.CheckpointManagerOptions(
      preservation_policy=cm.AnyPreservationPolicy(policies), create=True)
  return ocp.CheckpointManager(checkpoints_dir(workdir), options=options, item_names=TRAIN_ITEMS)


def save_train_checkpoint(manager, step: int, variables: Mapping[str, Any], opt_state: Any,
                          meta: Mapping[str, Any]) -> None:
  """Saves (asynchronously) the training state of `step`; every process must call it."""
  import orbax.checkpoint as ocp

  manager.save(int(step), args=ocp.args.Composite(
      variables=ocp.args.StandardSave(dict(variables)),
      opt_state=ocp.args.StandardSave(opt_state),
      meta=ocp.args.JsonSave(dict(meta, step=int(step)))), force=True)


def restore_train_checkpoint(manager, step: int, abstract_variables: Any,
                             abstract_opt_state: Any) -> tuple[Any, Any, dict]:
  """(variables, opt_state, meta) of `step`, placed as the abstract targets' shardings say."""
  import orbax.checkpoint as ocp

  restored = manager.restore(int(step), args=ocp.args.Composite(
      variables=ocp.args.StandardRestore(abstract_variables),
      opt_state=ocp.args.StandardRestore(abstract_opt_state),
      meta=ocp.args.JsonRestore()))
  return restored["variables"], restored["opt_state"], dict(restored["meta"])


def train_checkpoint_meta(manager, step: int) -> dict:
  """The JSON metadata saved with `step` (stage, data seed, ...), without reading arrays."""
  import orbax.checkpoint as ocp

  restored = manager.restore(int(step), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
  return dict(restored["meta"])


def _finished_steps(directory: pathlib.Path) -> list[int]:
  """Committed step directories of a CheckpointManager folder (tmp/unfinished ones skipped)."""
  if not directory.is_dir():
    return []
  return sorted(int(d.name) for d in directory.iterdir()
                if d.is_dir() and d.name.isdigit() and (d / "_CHECKPOINT_METADATA").is_file()
                and (d / VARIABLES_DIR).is_dir())


def latest_checkpoint(workdir: str | os.PathLike) -> pathlib.Path | None:
  """`<workdir>/checkpoints/<newest step>` (a variables checkpoint directory), None if none."""
  directory = checkpoints_dir(workdir)
  steps = _finished_steps(directory)
  return directory / str(steps[-1]) if steps else None


def resolve_checkpoint(path: str | os.PathLike) -> pathlib.Path:
  """A variables checkpoint directory from `path`: itself, or a training workdir's newest step."""
  path = pathlib.Path(path).absolute()
  if not path.exists():
    raise FileNotFoundError(f"checkpoint not found: {path}")
  if (path / VARIABLES_DIR).is_dir() or (path / "_METADATA").is_file():
    return path
  steps_dir = path if path.name == CHECKPOINTS_DIR else path / CHECKPOINTS_DIR
  steps = _finished_steps(steps_dir)
  if steps:
    return steps_dir / str(steps[-1])
  raise ValueError(f"{path} is neither a variables checkpoint (python -m convert, or "
                   f"<workdir>/{CHECKPOINTS_DIR}/<step>) nor a training workdir with checkpoints")
