"""Device mesh and shardings: the only module that names mesh axes (STYLE.md).

Training is plain data parallelism, as the original's DistributedDataParallel (SPEC §6.1):

  mesh      1-D, axis 'data', every device of every process (ordered by process, then id);
  params    replicated (PartitionSpec());
  batch     split along axis 0 (PartitionSpec('data')): the global batch of
            `train.global_batch_size` images is cut into equal per-device slices.

Several hosts (`jax.distributed.initialize()`, see rap_jax/main.py): each process reads its own
shard of the dataset (`input_pipeline.create_train_dataset(process_index=, process_count=)`) and
produces a per-host batch of `global_batch / process_count` images; `global_batch` assembles
those into global arrays with `jax.make_array_from_process_local_data`. Process p's rows of the
global batch are `process_rows(p)`: contiguous, in process order, so its devices (contiguous in
the mesh) hold exactly its own images.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """1-D data-parallel mesh over `devices` (default: all devices of all processes)."""
  devices = list(jax.devices() if devices is None else devices)
  devices.sort(key=lambda d: (d.process_index, d.id))
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array (params, optimizer state, step)."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Axis 0 split over the data axis (images of a batch)."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh, process_count: int | None = None
                     ) -> int:
  """Per-host batch size; ValueError unless the batch splits evenly over devices and hosts."""
  process_count = jax.process_count() if process_count is None else process_count
  devices = mesh.devices.size
  if global_batch_size % devices:
    raise ValueError(
        f"train.global_batch_size={global_batch_size} is not divisible by the {devices} devices "
        f"of the mesh: use a multiple of {devices} (e.g. "
        f"--config.train.global_batch_size={max(devices, global_batch_size // devices * devices)})")
  if global_batch_size % process_count:
    raise ValueError(f"train.global_batch_size={global_batch_size} is not divisible by the "
                     f"{process_count} processes")
  return global_batch_size // process_count


def process_rows(global_batch_size: int, process_index: int, process_count: int) -> slice:
  """Rows [start, stop) of the global batch that process `process_index` provides."""
  if global_batch_size % process_count:
    raise ValueError(f"global batch {global_batch_size} does not split over {process_count} "
                     "processes")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  per_host = global_batch_size // process_count
  return slice(process_index * per_host, (process_index + 1) * per_host)


def global_batch(local_batch: Any, mesh: Mesh) -> Any:
  """Per-host numpy batch (tree of [B_host, ...] arrays) -> global jax.Arrays sharded on axis 0.

  With one process this is a `device_put`; with several, each process passes its own rows and
  the result is one global array of `B_host * process_count` rows.
  """
  sharding = batch_sharded(mesh)
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def abstract_replicated(tree: Any, mesh: Mesh) -> Any:
  """`jax.ShapeDtypeStruct`s of `tree`'s leaves, replicated on `mesh` (restore targets)."""
  sharding = replicated(mesh)
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding), tree)


def host_local(tree: Any) -> Any:
  """Replicated global arrays -> numpy (this process's copy; works on any number of hosts)."""
  return jax.tree_util.tree_map(
      lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x),
      tree)
