"""Test set-up: 8 fake CPU devices (set before jax is imported) and fixture locations."""
import os
import pathlib
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = (REPO / ".." / "shared" / "fixtures").resolve()
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
  if not FIXTURES.is_dir():
    raise FileNotFoundError(f"fixtures folder not found: {FIXTURES} (expected ../shared/fixtures)")
  return FIXTURES


def convert_fixture(fixtures: pathlib.Path, out_dir: pathlib.Path, pth: str, config: str) -> str:
  """Run the real `python -m convert` entry point (in-process) on a fixture checkpoint."""
  from convert import cli  # pylint: disable=import-outside-toplevel
  import contextlib  # pylint: disable=import-outside-toplevel
  import io  # pylint: disable=import-outside-toplevel
  out = out_dir / pathlib.Path(pth).stem
  with contextlib.redirect_stdout(io.StringIO()):
    code = cli.main([str(fixtures / pth), str(out), "--config", str(REPO / config), "-v"])
  if code != 0:
    raise RuntimeError(f"python -m convert failed on {pth} (exit {code})")
  return str(out)


@pytest.fixture(scope="session")
def rap_small_ckpt(fixtures_dir, tmp_path_factory) -> str:
  """The small RAP fixture checkpoint converted with `python -m convert`."""
  return convert_fixture(fixtures_dir, tmp_path_factory.mktemp("ckpt"), "rap_small_legacy.pth",
                         "configs/fixtures/rap_small.py")


@pytest.fixture(scope="session")
def ocfusion_small_ckpt(fixtures_dir, tmp_path_factory) -> str:
  """The small OCFusion fixture checkpoint converted with `python -m convert`."""
  return convert_fixture(fixtures_dir, tmp_path_factory.mktemp("ckpt"),
                         "ocfusion_small_legacy.pth", "configs/fixtures/ocfusion_small.py")


@pytest.fixture(scope="session")
def rap_x101_small_ckpt(fixtures_dir, tmp_path_factory) -> str:
  """The small X-101-32x8d RAP fixture checkpoint converted with `python -m convert`."""
  return convert_fixture(fixtures_dir, tmp_path_factory.mktemp("ckpt"),
                         "rap_x101_small_legacy.pth", "configs/fixtures/rap_x101_small.py")
