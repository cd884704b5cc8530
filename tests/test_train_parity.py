"""scripts/train_parity.py: one line, exit 0 on the training fixture; non-zero beyond tolerance.

Both runs share one process, so the second reuses the first one's compiled program and, where the
inputs are the same, its run (`train_iteration.run_iteration` memoises per process).
"""
import importlib.util
import pathlib

import numpy as np
import pytest

from rap_jax.parity import train_iteration as ti

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "train_parity.py"


def _script():
  spec = importlib.util.spec_from_file_location("train_parity", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def args(fixtures_dir, rap_small_ckpt, ocfusion_small_ckpt):
  return ["--data", str(fixtures_dir / ti.DATA_DIR), "--rap-checkpoint", rap_small_ckpt,
          "--ocfusion-checkpoint", ocfusion_small_ckpt]


def test_script_reports_one_ok_line(fixtures_dir, args, capsys):
  code = _script().main(["--fixture", str(fixtures_dir / ti.NPZ)] + args)
  out = capsys.readouterr().out
  print(out)
  lines = out.strip().splitlines()
  assert code == 0 and len(lines) == 1, out
  line = lines[0]
  assert line.startswith("train_parity: inputs identical, targets identical, losses max rel ")
  assert "grads max rel " in line and "worst error/bound " in line
  assert "optimizer steps a, b within " in line and line.endswith(": OK")


def test_script_fails_beyond_tolerance(fixtures_dir, args, tmp_path, capsys):
  """A copy of the fixture with one loss 0.1% off and one gradient tensor 1% off."""
  d = ti.load_fixture(fixtures_dir / ti.NPZ)
  d["loss_mask"] = np.float64(d["loss_mask"] * 1.001)
  key = "grad/backbone.fpn.fpn_layer2.weight"
  d[key] = (d[key] * np.float32(1.01)).astype(np.float32)
  bad = tmp_path / ti.NPZ
  np.savez(bad, **d)
  code = _script().main(["--fixture", str(bad)] + args)
  out = capsys.readouterr().out.strip().splitlines()
  assert code == 1 and len(out) == 1, out
  assert ": FAIL: " in out[0]
  assert "loss_mask" in out[0] and "backbone.fpn.fpn_layer2.weight" in out[0]
