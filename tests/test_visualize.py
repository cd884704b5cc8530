"""Overlay rendering: colours, outlines and depth-rank labels land on the right pixels."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rap_jax import panoptic_io, visualize
from rap_jax.data import categories as cats
from rap_jax.ops import fusion as fusion_ops


def test_depth_ranks():
  np.testing.assert_array_equal(visualize.depth_ranks_from_relation([2.0, -1.0, 2.0, 0.5]),
                                [3, 1, 4, 2])
  occ = np.zeros((3, 3), bool)
  occ[2, 0] = occ[2, 1] = occ[0, 1] = True        # 2 in front of 0 and 1; 0 in front of 1
  np.testing.assert_array_equal(visualize.depth_ranks_from_occlusion(occ), [2, 3, 1])


def _scene():
  """A 120x160 grey photo: sky (stuff) on top, two overlapping people (things).

      rows 0-39 sky; person A rows 50-109 x 20-79; person B rows 60-99 x 60-139 (drawn over A)
  """
  image = np.full((120, 160, 3), 100, np.uint8)
  seg = np.zeros((120, 160), np.int32)
  seg[:40] = 3
  seg[50:110, 20:80] = 1
  seg[60:100, 60:140] = 2
  segments = [{"category_id": 1, "rank": 2}, {"category_id": 1, "rank": 1},
              {"category_id": 187}]
  return image, seg, segments


def test_overlay_blends_outlines_and_labels():
  image, seg, segments = _scene()
  unranked = [{"category_id": s["category_id"]} for s in segments]
  plain = visualize.render_panoptic_overlay(image, seg, unranked, title=None)
  assert plain.shape == image.shape and plain.dtype == np.uint8
  person = np.array(cats.category(1).color, np.float32)
  inside = plain[80, 40].astype(np.float32)       # deep inside A, away from labels
  np.testing.assert_allclose(inside, 0.4 * 100 + 0.6 * person, atol=1)
  np.testing.assert_array_equal(plain[110:, :], image[110:, :])       # unassigned: the photo
  assert (plain[50, 20:60] == 255).all()          # A's top border is outlined in white
  assert (plain[60, 80:140] == 255).all()         # B's top border
  assert (plain[59, 40] != 255).any()             # just outside A: not outlined
  assert (plain[39, 50] != plain[20, 50]).any()   # the sky's lower border is darkened
  labelled = visualize.render_panoptic_overlay(image, seg, segments, title="depth")
  changed = np.any(labelled != plain, axis=-1)
  ys, xs = np.nonzero(changed)
  assert changed[:20, :60].any()                  # the title
  # a label near each person's centre: B's at (80, 100); A's (visible part centred near
  # (80, 45)) is moved below B's label, which got the spot first as the nearer one
  assert changed[70:90, 85:115].any() and changed[80:110, 20:70].any()
  assert not changed[40:60, 100:160].any()        # nothing drawn far from the labels
  assert ys.max() < 120 and xs.max() < 160


def test_overlay_uses_panoptic_id_colours():
  image, seg, segments = _scene()
  segments[0]["id"] = panoptic_io.rgb2id((10, 200, 30))
  out = visualize.render_panoptic_overlay(image, seg, segments, alpha=1.0, title=None)
  np.testing.assert_array_equal(out[55, 30], [10, 200, 30])      # A, clear of labels


def test_render_fusion_ranks_from_relation_and_writes_png(tmp_path):
  masks = np.zeros((3, 48, 64), bool)
  masks[0, 5:30, 5:40] = True
  masks[1, 15:45, 25:60] = True                   # overlaps 0, nearer (smaller relation)
  masks[2, 0:4, 0:4] = True                       # invalid slot: ignored
  relation = np.array([3.0, -1.0, 0.0], np.float32)
  semantic = np.zeros((48, 64), np.int32)
  result = fusion_ops.fuse("rap", masks, np.array([0.9, 0.8, 0.7], np.float32),
                           np.array([1, 18, 1], np.int32), semantic, relation=relation,
                           valid=np.array([True, True, False]), stuff_area_limit=1, tile=None)
  segments = visualize.fusion_segments(result, method="rap", relation=relation)
  assert [(s["category_id"], s["rank"]) for s in segments] == [(1, 2), (18, 1)]
  image = np.zeros((40, 60, 3), np.uint8)         # the photo is smaller than the canvas
  with pytest.raises(ValueError, match="outside the image|cannot hold"):
    visualize.render_fusion(np.zeros((60, 60, 3), np.uint8), result, method="rap",
                            relation=relation)
  overlay = visualize.render_fusion(image, result, method="rap", relation=relation)
  assert overlay.shape == (40, 60, 3)
  path = visualize.write_overlay(tmp_path, "img", overlay)
  assert path == tmp_path / "vis" / "img.png"
  np.testing.assert_array_equal(np.asarray(Image.open(path)), overlay)
  with pytest.raises(ValueError, match="needs the relation"):
    visualize.fusion_segments(result, method="rap")
  oc = visualize.fusion_segments(result, method="ocfusion", occlusion=np.eye(3, dtype=bool))
  assert sorted(s["rank"] for s in oc if s["isthing"]) == [1, 2]


def test_overlay_rejects_bad_inputs():
  image, seg, segments = _scene()
  with pytest.raises(ValueError, match="uint8"):
    visualize.render_panoptic_overlay(image.astype(np.float32), seg, segments)
  with pytest.raises(ValueError, match="does not match"):
    visualize.render_panoptic_overlay(image, seg[:10], segments)
  with pytest.raises(ValueError, match="slots outside"):
    visualize.render_panoptic_overlay(image, seg, segments[:2])
  with pytest.raises(ValueError, match="invalid file stem"):
    visualize.write_overlay("/tmp", "", image)
