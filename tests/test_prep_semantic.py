"""``panoptic2semantic`` equals labels computed independently from the panoptic PNGs (SPEC §7.3):
PNGs decoded with Pillow (RGB, not OpenCV), label tables rebuilt here from the categories json."""
import pathlib

import numpy as np
import pytest
from PIL import Image

from rap_jax.data import categories, prep, prep_io

TINY = pathlib.Path(__file__).resolve().parent / "data" / "prep_tiny"


def _independent_table(style: str) -> dict[int, int]:
  cats = categories.categories_json()  # panopticapi's json order
  if style == "panopticapi":
    return {c["id"]: i + 1 for i, c in enumerate(cats)}
  table, n = {}, 0
  for c in cats:
    if c["isthing"]:
      table[c["id"]] = 54
    else:
      n += 1
      table[c["id"]] = n
  assert n == 53
  return table


def _independent_labels(png: pathlib.Path, segments, style: str) -> np.ndarray:
  rgb = np.asarray(Image.open(png).convert("RGB")).astype(np.int64)
  ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
  table = _independent_table(style)
  out = np.zeros(ids.shape, dtype=np.int64)
  for s in segments:
    out[ids == s["id"]] = table[s["category_id"]]
  return out


def _check(panoptic_json: pathlib.Path, folder: pathlib.Path, out: pathlib.Path, style: str) -> int:
  pano = prep_io.load_json(panoptic_json)
  written = prep.panoptic_to_semantic(pano, folder, out, style)
  assert len(written) == len(pano["annotations"])
  for ann in pano["annotations"]:
    got = np.asarray(Image.open(out / ann["file_name"]))
    assert got.dtype == np.uint8 and got.ndim == 2
    np.testing.assert_array_equal(got, _independent_labels(folder / ann["file_name"],
                                                           ann["segments_info"], style))
  return len(written)


@pytest.mark.parametrize("style", prep.STYLES)
def test_fixture_panoptic(fixtures_dir, tmp_path, style):
  d = fixtures_dir / "prep_astronaut_coffee"
  assert _check(d / "panoptic_train2017.json", d / "panoptic_train2017", tmp_path, style) == 2


@pytest.mark.parametrize("style", prep.STYLES)
def test_tiny_set(tmp_path, style):
  # includes a VOID gap (label 0), a crowd thing segment (54 / its class) and a stuff-only image
  assert _check(TINY / "panoptic.json", TINY / "panoptic", tmp_path, style) == 6
  labels = np.asarray(Image.open(tmp_path / "tiny_1.png"))
  assert (labels[30:40, 5:10] == 0).all()


@pytest.mark.parametrize("style", prep.STYLES)
def test_synthetic_set(tmp_path, style):
  from rap_jax.data import synthetic
  synthetic.generate(tmp_path / "syn", num_train=3, num_val=0, seed=5, crowd_prob=1.0, void_prob=1.0)
  ann = tmp_path / "syn" / "annotations"
  _check(ann / "panoptic_train2017.json", ann / "panoptic_train2017", tmp_path / "out", style)
  if style == "pfpn":  # the generator's own semantic PNGs are the pfpn labels
    for p in sorted((ann / "semantic_train2017").glob("*.png")):
      np.testing.assert_array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(tmp_path / "out" / p.name)))


def test_unknown_category_and_style(tmp_path):
  ids = np.array([[5, 0]], dtype=np.uint32)
  with pytest.raises(ValueError, match="unknown category id 12"):
    prep.semantic_labels(ids, [{"id": 5, "category_id": 12}], "pfpn", where="x.png")
  with pytest.raises(ValueError, match="style"):
    prep.semantic_labels(ids, [], "cityscapes")
