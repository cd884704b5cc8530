"""The one category table (rap_jax/data/categories.py): counts, id spaces and round trips."""
from __future__ import annotations

import json

import numpy as np
import pytest

from rap_jax.data import categories as cats


def test_counts():
  assert cats.NUM_CATEGORIES == len(cats.CATEGORIES) == 133
  assert cats.NUM_THING_CLASSES == len(cats.THING_IDS) == 80
  assert cats.NUM_STUFF_CLASSES == len(cats.STUFF_IDS) == 53
  assert cats.SEMANTIC_VOID == 0 and cats.SEMANTIC_THING == 54
  assert cats.NUM_SEMANTIC_CHANNELS == 55


def test_ids_unique_and_in_json_order():
  ids = [c.id for c in cats.CATEGORIES]
  assert ids == sorted(set(ids))  # json order is ascending id, no duplicates
  assert ids[0] == 1 and ids[-1] == 200
  # Things come first in the json (ids 1..90), then stuff (92..200).
  assert all(c.isthing == 1 for c in cats.CATEGORIES[:80])
  assert all(c.isthing == 0 for c in cats.CATEGORIES[80:])
  assert len({c.name for c in cats.CATEGORIES}) == 133
  assert len({c.color for c in cats.CATEGORIES}) == 133
  assert all(len(c.color) == 3 and all(0 <= v <= 255 for v in c.color) for c in cats.CATEGORIES)


def test_categories_json_equals_the_original_output(fixtures_dir):
  """The 133 category dicts the original writes into its prediction JSON, key order included."""
  for method in ("rap", "heuristic", "ocfusion"):
    original = json.loads((fixtures_dir / f"panoptic_{method}.json").read_text())["categories"]
    ours = cats.categories_json()
    assert ours == original
    assert [list(d) for d in ours] == [list(d) for d in original]


def test_thing_contiguous_round_trip():
  for k in range(1, 81):
    cid = cats.contiguous_to_coco(k)
    assert cats.is_thing(cid)
    assert cats.coco_to_contiguous(cid) == k
    assert cats.CONTIGUOUS_TO_COCO[k] == cid
    assert cats.COCO_TO_CONTIGUOUS[cid] == k
  assert cats.CONTIGUOUS_TO_COCO[0] == 0
  # Contiguous ids follow ascending COCO id (the instance json's category order).
  assert list(cats.CONTIGUOUS_TO_COCO[1:]) == sorted(cats.THING_IDS)
  assert (cats.contiguous_to_coco(1), cats.contiguous_to_coco(80)) == (1, 90)


def test_semantic_channel_round_trip():
  for ch in range(1, 54):
    cid = cats.semantic_to_coco(ch)
    assert not cats.is_thing(cid)
    assert cats.semantic_channel(cid) == ch
    assert cats.SEMANTIC_TO_COCO[ch] == cid
    assert cats.COCO_TO_SEMANTIC[cid] == ch
  # Stuff channels follow json order: first stuff is 'banner' (92), last 'rug-merged' (200).
  assert (cats.semantic_to_coco(1), cats.semantic_to_coco(53)) == (92, 200)
  assert cats.SEMANTIC_TO_COCO[0] == 0 and cats.SEMANTIC_TO_COCO[54] == 0
  for cid in cats.THING_IDS:
    assert cats.semantic_channel(cid) == 54 and cats.COCO_TO_SEMANTIC[cid] == 54


def test_lookup_arrays_cover_every_id():
  known = {c.id for c in cats.CATEGORIES}
  for cid in range(len(cats.COCO_TO_SEMANTIC)):
    if cid not in known:  # unknown ids map to void / background
      assert cats.COCO_TO_SEMANTIC[cid] == 0 and cats.COCO_TO_CONTIGUOUS[cid] == 0
      assert cats.COCO_TO_INDEX133[cid] == 0
  index = cats.COCO_TO_INDEX133[[c.id for c in cats.CATEGORIES]]
  np.testing.assert_array_equal(index, np.arange(1, 134))
  assert cats.CONTIGUOUS_TO_COCO.dtype == np.int32 and cats.CONTIGUOUS_TO_COCO.shape == (81,)
  assert cats.SEMANTIC_TO_COCO.shape == (55,)


def test_thing_categories_json():
  things = cats.thing_categories_json()
  assert [t["id"] for t in things] == list(cats.THING_IDS)
  assert things[0] == {"supercategory": "person", "id": 1, "name": "person"}


@pytest.mark.parametrize("call, arg, match", [
    (cats.category, 12, "12"),
    (cats.contiguous_to_coco, 0, "1..80"),
    (cats.contiguous_to_coco, 81, "1..80"),
    (cats.coco_to_contiguous, 92, "92"),
    (cats.semantic_to_coco, 54, "1..53"),
    (cats.semantic_to_coco, 0, "1..53"),
])
def test_bad_ids_fail_naming_the_id(call, arg, match):
  with pytest.raises((KeyError, ValueError), match=match):
    call(arg)
