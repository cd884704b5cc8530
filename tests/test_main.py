"""The command line (rap_jax/main.py): overrides, error messages naming the key, mode dispatch."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
from absl import flags

from rap_jax import config_checks
from rap_jax import main as rap_main

REPO = pathlib.Path(__file__).resolve().parents[1]


def _cli(*args: str, tmp_path: pathlib.Path) -> subprocess.CompletedProcess:
  """`python -m rap_jax.main --config configs/tiny.py --workdir <tmp> <args>` from the repo root."""
  cmd = [sys.executable, "-m", "rap_jax.main", "--config", "configs/tiny.py",
         "--workdir", str(tmp_path / "work"), *args]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, expected", [
    (["--config.fusion.method=bogus"],
     ["fusion.method='bogus'", "must be one of ('heuristic', 'rap', 'ocfusion')"]),
    (["--config.model.nope=1"], ["unknown config key 'model.nope'"]),
    (["--config.model.backbone.dept=101"],
     ["unknown config key 'model.backbone.dept'", "did you mean 'model.backbone.depth'"]),
    (["--config.model.fpn.out_channels=abc"], ["--config.model.fpn.out_channels=abc"]),
    (["--config.model.semantic.num_groups=5"],
     ["model.semantic.conv_dim=32: must be divisible by model.semantic.num_groups"]),
    (["--config.fusion.method=ocfusion"],
     ["fusion.method='ocfusion': needs model.roi_heads.relation.kind='ocfusion'"]),
    (["--config.model.backbone.depth=34"],
     ["model.backbone.depth=34: must be one of (50, 101, 152)"]),
    (["--mode", "predict"], ["predict.images=''", "--config.predict.images"]),
    (["--mode", "test"], ["--mode=test", "<train|eval|predict>"]),
])
def test_bad_value_or_key_fails_naming_it(args, expected, tmp_path):
  result = _cli(*args, tmp_path=tmp_path)
  assert result.returncode != 0
  for text in expected:
    assert text in result.stderr, result.stderr
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "work").exists()  # nothing ran


def test_every_problem_is_reported_at_once(tmp_path):
  result = _cli("--config.fusion.confidence_thr=1.5", "--config.input.size_divisibility=48",
                tmp_path=tmp_path)
  assert result.returncode != 0
  assert "fusion.confidence_thr=1.5: must be in [0, 1]" in result.stderr
  assert "input.size_divisibility=48: must be a positive multiple of 32" in result.stderr


@pytest.fixture
def run_main(monkeypatch, tmp_path):
  """Runs main in this process with the given flags; modes are recorded, not executed."""
  calls = []
  monkeypatch.setattr(rap_main, "hide_gpus_from_tensorflow", lambda: None)
  monkeypatch.setattr(rap_main, "initialize_jax", lambda multihost: None)
  monkeypatch.setattr(rap_main, "prepare_data", lambda config: calls.append(("data", config)))

  def lookup(mode):
    return lambda config, workdir: calls.append((mode, config, workdir))

  def run(*args: str, config="configs/tiny.py"):
    monkeypatch.setattr(rap_main, "mode_function", lookup)
    argv = ["rap_jax.main", "--config", config, "--workdir", str(tmp_path / "work"), *args]
    monkeypatch.setattr(sys, "argv", argv)  # config_flags reads the overrides from sys.argv
    monkeypatch.chdir(REPO)
    try:
      rest = rap_main.parse_flags(argv)
      rap_main.main(rest)
    finally:
      flags.FLAGS.unparse_flags()
    return calls

  return run


def test_overrides_reach_the_mode(run_main, tmp_path):
  calls = run_main("--mode", "eval", "--config.fusion.method=heuristic",
                   "--config.model.fpn.out_channels=24", "--config.init_checkpoint=/ckpt")
  assert [c[0] for c in calls] == ["data", "eval"]
  _, config, workdir = calls[1]
  assert workdir == str(tmp_path / "work")
  assert config.fusion.method == "heuristic"
  assert config.init_checkpoint == "/ckpt"
  # The FPN width is a FieldReference: overriding it moves every head's input width.
  assert config.model.roi_heads.mask.in_channels == 24
  saved = json.loads((tmp_path / "work" / "config.json").read_text())
  assert saved["fusion"]["method"] == "heuristic"


def test_config_is_locked(run_main):
  calls = run_main("--mode", "train")
  config = calls[-1][1]
  with pytest.raises(AttributeError):
    config.model.new_key = 1


def test_default_modes_come_from_the_config(run_main):
  calls = run_main(config="configs/demo.py")
  assert [c[0] for c in calls] == ["data", "train"]
  assert calls[-1][1].data.data_dir == "datasets/synthetic"


def test_mode_functions_resolve_to_the_drivers():
  assert set(rap_main.MODE_FUNCTIONS) == set(config_checks.MODES)
  for mode, (module, function) in rap_main.MODE_FUNCTIONS.items():
    fn = rap_main.mode_function(mode)
    assert fn.__name__ == function and fn.__module__ == module


def test_prepare_data_generates_the_synthetic_set_once(tmp_path):
  from configs import tiny
  config = tiny.get_config()
  config.data.data_dir = str(tmp_path / "syn")
  config.data.synthetic.update(num_train=2, num_val=1, image_size=64)
  rap_main.prepare_data(config)
  root = tmp_path / "syn"
  assert len(list((root / "images" / "train2017").glob("*.png"))) == 2
  assert len(list((root / "images" / "val2017").glob("*.png"))) == 1
  stamp = (root / "synthetic_config.json").stat().st_mtime_ns
  rap_main.prepare_data(config)  # complete: not regenerated
  assert (root / "synthetic_config.json").stat().st_mtime_ns == stamp


def test_prepare_data_refuses_a_foreign_folder(tmp_path):
  from configs import tiny
  config = tiny.get_config()
  (tmp_path / "coco" / "images").mkdir(parents=True)
  (tmp_path / "coco" / "images" / "keep.jpg").write_bytes(b"x")
  config.data.data_dir = str(tmp_path / "coco")
  with pytest.raises(SystemExit, match="holds no synthetic dataset"):
    rap_main.prepare_data(config)
  assert (tmp_path / "coco" / "images" / "keep.jpg").exists()


def test_prepare_data_ignores_coco(tmp_path):
  from configs import common
  config = common.get_config()
  config.data.data_dir = str(tmp_path / "nothing")
  rap_main.prepare_data(config)
  assert not (tmp_path / "nothing").exists()
