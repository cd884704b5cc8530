"""Parity of the data-preparation scripts with the ORIGINAL scripts' outputs (fixtures README,
"Data-preparation fixtures"; SPEC §7): relations (key and list order), refined JSON (bytes), both
semantic label styles (pixels and bytes)."""
import importlib.util
import json
import pathlib
import subprocess
import sys

import cv2
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _script(name: str):
  spec = importlib.util.spec_from_file_location(f"script_{name}", REPO / "scripts" / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.fixture(scope="module")
def prep_dir(fixtures_dir):
  return fixtures_dir / "prep_astronaut_coffee"


def test_retrieve_relation_matches_original(prep_dir, tmp_path, capsys):
  out = tmp_path / "relations.json"
  _script("retrieve_relation").main([
      "--instances-json", str(prep_dir / "instances_train2017.json"),
      "--panoptic-json", str(prep_dir / "panoptic_train2017.json"),
      "--panoptic-folder", str(prep_dir / "panoptic_train2017"), "--output", str(out),
      "--no-progress"])
  # The original prints images with a relation, then the number of relations.
  assert capsys.readouterr().out.split()[:2] == ["2", "10"]
  assert out.read_bytes() == (prep_dir / "relations.json").read_bytes()
  got, want = json.loads(out.read_text()), json.loads((prep_dir / "relations.json").read_text())
  assert list(got) == list(want)
  for k in want:
    assert list(got[k].items()) == list(want[k].items())


def test_refine_instance_json_matches_original(prep_dir, tmp_path):
  out = tmp_path / "with_relation.json"
  _script("refine_instance_json").main([
      "--instances-json", str(prep_dir / "instances_train2017.json"),
      "--relations", str(prep_dir / "relations.json"), "--output", str(out)])
  want_path = prep_dir / "instances_train2017_with_relation.json"
  got, want = json.loads(out.read_text()), json.loads(want_path.read_text())
  assert list(got) == list(want)
  for a, b in zip(got["annotations"], want["annotations"], strict=True):
    assert list(a.items()) == list(b.items())  # every field, key order and overlap order
  assert got == want
  assert out.read_bytes() == want_path.read_bytes()


@pytest.mark.parametrize("style,folder", [("pfpn", "semantic_pfpn_style"),
                                          ("panopticapi", "semantic_133_classes")])
def test_panoptic2semantic_matches_original(prep_dir, tmp_path, style, folder):
  out = tmp_path / style
  _script("panoptic2semantic").main([
      "--panoptic-json", str(prep_dir / "panoptic_train2017.json"),
      "--panoptic-folder", str(prep_dir / "panoptic_train2017"), "--output-folder", str(out),
      "--style", style, "--no-progress"])
  for name in ("astronaut.png", "coffee.png"):
    got = cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)
    want = cv2.imread(str(prep_dir / folder / name), cv2.IMREAD_UNCHANGED)
    assert got.dtype == np.uint8 and got.ndim == 2
    np.testing.assert_array_equal(got, want)
    assert (out / name).read_bytes() == (prep_dir / folder / name).read_bytes()


def test_pfpn_labels_equal_training_labels(prep_dir, fixtures_dir, tmp_path):
  """The pfpn-style output is the semantic PNG the training fixture was made with."""
  from rap_jax.data import prep, prep_io
  prep.panoptic_to_semantic(prep_io.load_json(prep_dir / "panoptic_train2017.json"),
                            prep_dir / "panoptic_train2017", tmp_path, "pfpn")
  for name in ("astronaut.png", "coffee.png"):
    want = cv2.imread(str(fixtures_dir / "train_data_astronaut_coffee/semantic_train2017" / name),
                      cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / name), cv2.IMREAD_GRAYSCALE), want)


def test_scripts_run_as_commands(prep_dir, tmp_path):
  """The command lines work from any folder (no installed package needed), retrieve -> refine."""
  rel, ref = tmp_path / "r.json", tmp_path / "i.json"
  py = sys.executable
  subprocess.run([py, str(REPO / "scripts/retrieve_relation.py"),
                  "--instances-json", str(prep_dir / "instances_train2017.json"),
                  "--panoptic-json", str(prep_dir / "panoptic_train2017.json"),
                  "--panoptic-folder", str(prep_dir / "panoptic_train2017"),
                  "--output", str(rel), "--no-progress"], check=True, cwd=tmp_path,
                 capture_output=True)
  subprocess.run([py, str(REPO / "scripts/refine_instance_json.py"),
                  "--instances-json", str(prep_dir / "instances_train2017.json"),
                  "--relations", str(rel), "--output", str(ref)], check=True, cwd=tmp_path,
                 capture_output=True)
  assert ref.read_bytes() == (prep_dir / "instances_train2017_with_relation.json").read_bytes()
