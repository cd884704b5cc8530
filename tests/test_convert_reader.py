"""convert/pth_reader.py, convert/source.py: torch-free reading of both `.pth` formats (SPEC §9.0).

torch is used here only to write test files and as the oracle (`torch.load`).
"""
import os
import pickle

import numpy as np
import pytest
import torch

from convert import pth_reader
from convert import source

FORMATS = {"legacy": False, "zip": True}  # value: torch.save(_use_new_zipfile_serialization=)


def _save(obj, path, fmt):
  torch.save(obj, path, _use_new_zipfile_serialization=FORMATS[fmt])
  return path


@pytest.mark.parametrize("name", ["rap_small_legacy.pth", "rap_small_zip.pth",
                                  "ocfusion_small_legacy.pth", "rap_x101_small_legacy.pth"])
def test_fixture_tensors_equal_torch_load(fixtures_dir, name):
  path = fixtures_dir / name
  ours = source.read_checkpoint(path)
  theirs = torch.load(path, map_location="cpu", weights_only=True)
  assert ours.format == ("zip" if "zip" in name else "legacy")
  assert ours.wrapped and ours.iteration == 160000 and ours.ignored_entries == ()
  assert ours.stripped_prefix == "module."
  model = theirs["model"]
  assert list(ours.state_dict) == [k[len("module."):] for k in model]
  for key, tensor in model.items():
    got = ours.state_dict[key[len("module."):]]
    assert got.dtype == np.float32 and got.shape == tuple(tensor.shape), key
    np.testing.assert_array_equal(got, tensor.numpy(), err_msg=key)


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("wrapper", ["bare", "model_only", "training", "ddp_training"])
def test_wrappers_and_prefix(tmp_path, fmt, wrapper):
  gen = torch.Generator().manual_seed(0)
  sd = {"rpn.head.conv.weight": torch.randn(4, 4, 3, 3, generator=gen),
        "rpn.head.conv.bias": torch.randn(4, generator=gen)}
  if wrapper.startswith("ddp"):
    sd = {"module." + k: v for k, v in sd.items()}
  optimizer = {"state": {0: {"momentum_buffer": torch.ones(4, 4, 3, 3)}},
               "param_groups": [{"lr": 0.02, "momentum": 0.9, "params": [0, 1]}]}
  scheduler = {"milestones": [80000, 120000], "gamma": 0.1, "warmup_factor": 1 / 3,
               "warmup_iters": 500, "warmup_method": "linear", "base_lrs": [0.02],
               "last_epoch": 90000}
  obj = {"bare": sd, "model_only": {"model": sd},
         "training": {"model": sd, "optimizer": optimizer, "scheduler": scheduler,
                      "iteration": 90000}}.get(wrapper)
  if obj is None:
    obj = {"model": sd, "optimizer": optimizer, "scheduler": scheduler, "iteration": 90000}
  ours = source.read_checkpoint(_save(obj, tmp_path / "c.pth", fmt))
  assert ours.format == fmt
  assert list(ours.state_dict) == ["rpn.head.conv.weight", "rpn.head.conv.bias"]
  assert ours.stripped_prefix == ("module." if wrapper.startswith("ddp") else "")
  assert ours.wrapped == (wrapper != "bare")
  assert ours.iteration == (90000 if "training" in wrapper else None)
  ignored = {"optimizer", "scheduler"} if "training" in wrapper else set()
  assert set(ours.ignored_entries) == ignored
  for key, tensor in sd.items():
    np.testing.assert_array_equal(ours.state_dict[key.removeprefix("module.")], tensor.numpy())


def test_prefix_kept_unless_every_key_has_it(tmp_path):
  sd = {"module.a.weight": torch.ones(2), "b.weight": torch.zeros(2)}
  ours = source.read_checkpoint(_save({"model": sd}, tmp_path / "c.pth", "zip"))
  assert ours.stripped_prefix == "" and list(ours.state_dict) == list(sd)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_strided_shared_and_dtypes(tmp_path, fmt):
  base = torch.arange(60, dtype=torch.float32).reshape(5, 12)
  sd = {
      "column": base[:, 3],                   # offset 3, stride 12
      "transposed": base.t(),                 # strides (1, 12)
      "slice": base[1:4, 2:10:3],             # offset + steps
      "same_storage": base,                   # storage shared with the three above
      "scalar": torch.tensor(2.5),
      "empty": torch.zeros(0, 3),
      "f16": torch.linspace(-2, 2, 7).half(),
      "f64": torch.linspace(-2, 2, 7).double(),
      "bf16": torch.linspace(-2, 2, 7).bfloat16(),
      "i64": torch.arange(-3, 4),
      "u8": torch.arange(7, dtype=torch.uint8),
      "bool": torch.tensor([True, False, True]),
  }
  ours = source.read_checkpoint(_save(sd, tmp_path / "c.pth", fmt)).state_dict
  for key, tensor in sd.items():
    want = tensor.float().numpy() if key == "bf16" else tensor.numpy()
    got = ours[key].astype(np.float32) if key == "bf16" else ours[key]
    assert got.dtype == want.dtype and got.shape == want.shape, key
    np.testing.assert_array_equal(got, want, err_msg=key)
    assert ours[key].flags.c_contiguous


def test_read_only_model_tensors(tmp_path, monkeypatch):
  sd = {"a.weight": torch.ones(3)}
  path = _save({"model": sd, "optimizer": {"state": {0: {"m": torch.ones(1000)}}}},
               tmp_path / "c.pth", "legacy")
  reads = []
  original = pth_reader.PthFile.read_array
  monkeypatch.setattr(pth_reader.PthFile, "read_array",
                      lambda self, ref: reads.append(ref.shape) or original(self, ref))
  source.read_checkpoint(path)
  assert reads == [(3,)]


class _SystemCall:
  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return os.system, (self.command,)


class _Eval:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return eval, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("attack", ["os.system", "builtins.eval"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, fmt, attack):
  marker = tmp_path / "pwned"
  payload = _SystemCall(f"touch {marker}") if attack == "os.system" else _Eval(marker)
  path = _save({"model": {"a.weight": torch.ones(2)}, "optimizer": payload},
               tmp_path / "evil.pth", fmt)
  with pytest.raises(pth_reader.UnsafePickleError) as info:
    source.read_checkpoint(path)
  message = str(info.value)
  assert str(path) in message and "refused" in message
  assert ("system" in message) if attack == "os.system" else ("builtins.eval" in message)
  assert not marker.exists()


def test_plain_pickle_attack_is_refused(tmp_path):
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.pth"
  path.write_bytes(pickle.dumps(_SystemCall(f"touch {marker}"), protocol=2))
  with pytest.raises(pth_reader.UnsafePickleError, match="evil.pth"):
    source.read_checkpoint(path)
  assert not marker.exists()


def test_allowed_global_cannot_be_abused(tmp_path):
  # A storage type is data, not a callable: REDUCE on it is a clear error, not a call.
  path = tmp_path / "odd.pth"
  path.write_bytes(b"\x80\x02ctorch\nFloatStorage\n)R.")
  with pytest.raises(pth_reader.PthFormatError, match="odd.pth"):
    source.read_checkpoint(path)


@pytest.mark.parametrize("name,cut", [
    ("rap_small_legacy.pth", 100),        # inside the pickled state_dict
    ("rap_small_legacy.pth", 0.5),        # inside the data section
    ("rap_small_legacy.pth", -10),        # last storage incomplete
    ("rap_small_zip.pth", 0.5),           # zip central directory missing
    ("rap_small_zip.pth", -10),
])
def test_truncated_file_names_the_file(fixtures_dir, tmp_path, name, cut):
  data = (fixtures_dir / name).read_bytes()
  n = int(len(data) * cut) if isinstance(cut, float) else cut
  path = tmp_path / f"cut_{name}"
  path.write_bytes(data[:n])
  with pytest.raises(pth_reader.PthFormatError) as info:
    source.read_checkpoint(path)
  assert str(path) in str(info.value)


def test_corrupt_zip_member_names_the_file(fixtures_dir, tmp_path):
  data = bytearray((fixtures_dir / "rap_small_zip.pth").read_bytes())
  i = data.index(b"rap_small_zip/data/0") + 200   # inside the first storage record
  data[i:i + 16] = bytes(16)
  path = tmp_path / "crc.pth"
  path.write_bytes(bytes(data))
  with pytest.raises(pth_reader.PthFormatError, match="crc.pth"):
    source.read_checkpoint(path)


@pytest.mark.parametrize("content", [b"", np.random.default_rng(0).bytes(4096), b"PK\x03\x04junk",
                                     pickle.dumps({"blobs": [1, 2]}), pickle.dumps([1, 2, 3])])
def test_garbage_and_non_checkpoints(tmp_path, content):
  path = tmp_path / "garbage.pth"
  path.write_bytes(content)
  with pytest.raises(pth_reader.PthFormatError) as info:
    source.read_checkpoint(path)
  assert str(path) in str(info.value)


def test_missing_file(tmp_path):
  with pytest.raises(pth_reader.PthFormatError, match="no such file"):
    source.read_checkpoint(tmp_path / "nope.pth")


def test_non_tensor_state_dict_is_refused(tmp_path):
  path = _save({"model": {"a.weight": torch.ones(1), "b": 3}}, tmp_path / "c.pth", "zip")
  with pytest.raises(pth_reader.PthFormatError, match="not tensors"):
    source.read_checkpoint(path)
