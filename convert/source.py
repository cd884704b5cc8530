"""The model state_dict inside an original checkpoint file (SPEC §9.0, §9.1).

maskrcnn-benchmark's `Checkpointer.save` writes `{'model': state_dict, 'optimizer': ...,
'scheduler': ..., 'iteration': int}`; finetune checkpoints re-save the stage-1 optimizer and
scheduler; users may also hand us a bare state_dict. Keys of a DistributedDataParallel model carry a
`module.` prefix, stripped (as the original does) only when every key has it. Only the `model`
tensors are read from disk; the other entries are listed and ignored.
"""
from __future__ import annotations

import collections
import dataclasses
import os
from typing import Any, Mapping

import numpy as np

from convert import pth_reader

DDP_PREFIX = "module."


@dataclasses.dataclass
class SourceCheckpoint:
  """`state_dict`: key (prefix stripped) -> numpy array in the file's PyTorch layout."""
  path: str
  format: str                              # 'legacy' | 'zip'
  state_dict: "collections.OrderedDict[str, np.ndarray]"
  wrapped: bool                            # True: found under the 'model' entry
  ignored_entries: tuple[str, ...]         # other top-level entries (optimizer, scheduler, ...)
  iteration: int | None
  stripped_prefix: str                     # DDP_PREFIX or ''


def _model_entry(path: str, obj: Any) -> tuple[Mapping[str, Any], bool, tuple[str, ...]]:
  if not isinstance(obj, Mapping):
    raise pth_reader.PthFormatError(
        f"{path}: expected a dict (state_dict or {{'model': state_dict, ...}}), "
        f"got {type(obj).__name__}")
  if "model" in obj and isinstance(obj["model"], Mapping):
    return obj["model"], True, tuple(str(k) for k in obj if k not in ("model", "iteration"))
  if obj and all(isinstance(v, pth_reader.TensorRef) for v in obj.values()):
    return obj, False, ()
  raise pth_reader.PthFormatError(
      f"{path}: neither a state_dict nor a dict with a 'model' state_dict; top-level keys: "
      f"{sorted(map(str, obj))[:20]}")


def read_checkpoint(path: str | os.PathLike) -> SourceCheckpoint:
  """Reads the model state_dict of a `.pth` file (both formats) without torch.

  Raises:
    pth_reader.PthFormatError: unreadable, corrupt, unsafe or unexpected content (names the file).
  """
  path = os.fspath(path)
  with pth_reader.open_pth(path) as pth:
    model, wrapped, ignored = _model_entry(path, pth.obj)
    bad = [str(k) for k, v in model.items()
           if not (isinstance(k, str) and isinstance(v, pth_reader.TensorRef))]
    if bad:
      raise pth_reader.PthFormatError(
          f"{path}: state_dict entries that are not tensors: {bad[:10]}")
    keys = list(model)
    prefix = DDP_PREFIX if keys and all(k.startswith(DDP_PREFIX) for k in keys) else ""
    state_dict = collections.OrderedDict(
        (k[len(prefix):], pth.read_array(model[k])) for k in keys)
    iteration = pth.obj.get("iteration") if wrapped else None
    return SourceCheckpoint(
        path=path, format=pth.format, state_dict=state_dict, wrapped=wrapped,
        ignored_entries=ignored, iteration=iteration if type(iteration) is int else None,
        stripped_prefix=prefix)
