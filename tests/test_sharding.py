"""rap_jax/sharding.py: the data mesh, batch checks and per-host batch assembly (8 fake devices)."""
import jax
import numpy as np
import pytest

from rap_jax import sharding


def test_mesh_spans_every_device_on_one_data_axis():
  mesh = sharding.make_mesh()
  assert mesh.axis_names == (sharding.DATA_AXIS,)
  assert mesh.devices.size == jax.device_count() == 8
  assert sharding.replicated(mesh).spec == jax.sharding.PartitionSpec()
  assert sharding.batch_sharded(mesh).spec == jax.sharding.PartitionSpec(sharding.DATA_AXIS)


def test_batch_size_must_split_over_devices_and_hosts():
  mesh = sharding.make_mesh()
  assert sharding.check_batch_size(16, mesh, process_count=1) == 16
  assert sharding.check_batch_size(16, mesh, process_count=2) == 8
  with pytest.raises(ValueError, match=r"global_batch_size=12 is not divisible by the 8 devices"):
    sharding.check_batch_size(12, mesh, process_count=1)
  with pytest.raises(ValueError, match="--config.train.global_batch_size=8"):
    sharding.check_batch_size(12, mesh, process_count=1)
  small = sharding.make_mesh(jax.devices()[:2])
  with pytest.raises(ValueError, match="not divisible by the 3 processes"):
    sharding.check_batch_size(4, small, process_count=3)


@pytest.mark.parametrize("process_count", [1, 2, 4, 8])
def test_process_rows_match_the_devices_each_process_owns(process_count):
  """Simulated hosts: process p owns mesh devices [p*8/P, (p+1)*8/P) (make_mesh orders devices by
  process); the rows the batch sharding gives those devices are exactly `process_rows(p)`, so a
  host's own images stay on its own devices."""
  mesh = sharding.make_mesh()
  global_batch, per_device = 16, 2
  index_map = sharding.batch_sharded(mesh).devices_indices_map((global_batch, 3))
  devices = list(mesh.devices.flat)
  per_host = len(devices) // process_count
  rows = []
  for p in range(process_count):
    mine = sharding.process_rows(global_batch, p, process_count)
    rows.extend(range(mine.start, mine.stop))
    owned = devices[p * per_host:(p + 1) * per_host]
    got = sorted(r for d in owned for r in range(*index_map[d][0].indices(global_batch)))
    assert got == list(range(mine.start, mine.stop))
    assert mine.stop - mine.start == per_host * per_device
  assert rows == list(range(global_batch))  # the hosts' rows partition the batch, in order
  with pytest.raises(ValueError):
    sharding.process_rows(10, 0, 4)
  with pytest.raises(ValueError):
    sharding.process_rows(8, 4, 4)


def test_global_batch_from_host_numpy():
  mesh = sharding.make_mesh()
  local = {"image": np.arange(8 * 4 * 3, dtype=np.float32).reshape(8, 4, 3),
           "image_info": {"resized_hw": np.tile(np.int32([[4, 3]]), (8, 1)),
                          "is_padding": np.zeros(8, bool)}}
  batch = sharding.global_batch(local, mesh)
  for got, want in zip(jax.tree_util.tree_leaves(batch), jax.tree_util.tree_leaves(local)):
    assert got.sharding == sharding.batch_sharded(mesh)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(np.asarray(got), want)
    assert {s.data.shape[0] for s in got.addressable_shards} == {1}


def test_host_local_reads_replicated_arrays():
  mesh = sharding.make_mesh()
  tree = {"a": np.arange(3.0, dtype=np.float32), "step": np.int32(7)}
  repl = jax.device_put(tree, sharding.replicated(mesh))
  local = sharding.host_local(repl)
  np.testing.assert_array_equal(local["a"], tree["a"])
  assert local["step"] == 7 and isinstance(local["step"], np.ndarray)
  abstract = sharding.abstract_replicated(tree, mesh)
  assert abstract["a"].shape == (3,) and abstract["a"].sharding == sharding.replicated(mesh)
