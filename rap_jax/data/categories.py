"""The one category table: COCO panoptic ids, contiguous thing ids and semantic channels.

Three id spaces meet in RAP (SPEC §2.8, §4.1):

* COCO panoptic category ids (1..200, 133 used), as in panopticapi's
  ``panoptic_coco_categories.json`` (80 things, 53 stuff), in json order = ascending id.
* Contiguous thing ids 1..80 used by the box/mask heads: contiguous id ``k`` is the k-th thing
  category in ascending COCO id (0 = background).
* Semantic channels 0..54 of the semantic head: 0 = void (untrained, but part of the test-time
  argmax), 1..53 = the stuff categories in json order, 54 = "thing" (all 80 merged).

Everything else in the package converts through the arrays defined here.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Category(NamedTuple):
  id: int
  name: str
  supercategory: str
  isthing: int
  color: tuple[int, int, int]


# (id, name, supercategory, isthing, color): panopticapi's panoptic_coco_categories.json, in order.
_TABLE = (
    (1, 'person', 'person', 1, (220, 20, 60)),
    (2, 'bicycle', 'vehicle', 1, (119, 11, 32)),
    (3, 'car', 'vehicle', 1, (0, 0, 142)),
    (4, 'motorcycle', 'vehicle', 1, (0, 0, 230)),
    (5, 'airplane', 'vehicle', 1, (106, 0, 228)),
    (6, 'bus', 'vehicle', 1, (0, 60, 100)),
    (7, 'train', 'vehicle', 1, (0, 80, 100)),
    (8, 'truck', 'vehicle', 1, (0, 0, 70)),
    (9, 'boat', 'vehicle', 1, (0, 0, 192)),
    (10, 'traffic light', 'outdoor', 1, (250, 170, 30)),
    (11, 'fire hydrant', 'outdoor', 1, (100, 170, 30)),
    (13, 'stop sign', 'outdoor', 1, (220, 220, 0)),
    (14, 'parking meter', 'outdoor', 1, (175, 116, 175)),
    (15, 'bench', 'outdoor', 1, (250, 0, 30)),
    (16, 'bird', 'animal', 1, (165, 42, 42)),
    (17, 'cat', 'animal', 1, (255, 77, 255)),
    (18, 'dog', 'animal', 1, (0, 226, 252)),
    (19, 'horse', 'animal', 1, (182, 182, 255)),
    (20, 'sheep', 'animal', 1, (0, 82, 0)),
    (21, 'cow', 'animal', 1, (120, 166, 157)),
    (22, 'elephant', 'animal', 1, (110, 76, 0)),
    (23, 'bear', 'animal', 1, (174, 57, 255)),
    (24, 'zebra', 'animal', 1, (199, 100, 0)),
    (25, 'giraffe', 'animal', 1, (72, 0, 118)),
    (27, 'backpack', 'accessory', 1, (255, 179, 240)),
    (28, 'umbrella', 'accessory', 1, (0, 125, 92)),
    (31, 'handbag', 'accessory', 1, (209, 0, 151)),
    (32, 'tie', 'accessory', 1, (188, 208, 182)),
    (33, 'suitcase', 'accessory', 1, (0, 220, 176)),
    (34, 'frisbee', 'sports', 1, (255, 99, 164)),
    (35, 'skis', 'sports', 1, (92, 0, 73)),
    (36, 'snowboard', 'sports', 1, (133, 129, 255)),
    (37, 'sports ball', 'sports', 1, (78, 180, 255)),
    (38, 'kite', 'sports', 1, (0, 228, 0)),
    (39, 'baseball bat', 'sports', 1, (174, 255, 243)),
    (40, 'baseball glove', 'sports', 1, (45, 89, 255)),
    (41, 'skateboard', 'sports', 1, (134, 134, 103)),
    (42, 'surfboard', 'sports', 1, (145, 148, 174)),
    (43, 'tennis racket', 'sports', 1, (255, 208, 186)),
    (44, 'bottle', 'kitchen', 1, (197, 226, 255)),
    (46, 'wine glass', 'kitchen', 1, (171, 134, 1)),
    (47, 'cup', 'kitchen', 1, (109, 63, 54)),
    (48, 'fork', 'kitchen', 1, (207, 138, 255)),
    (49, 'knife', 'kitchen', 1, (151, 0, 95)),
    (50, 'spoon', 'kitchen', 1, (9, 80, 61)),
    (51, 'bowl', 'kitchen', 1, (84, 105, 51)),
    (52, 'banana', 'food', 1, (74, 65, 105)),
    (53, 'apple', 'food', 1, (166, 196, 102)),
    (54, 'sandwich', 'food', 1, (208, 195, 210)),
    (55, 'orange', 'food', 1, (255, 109, 65)),
    (56, 'broccoli', 'food', 1, (0, 143, 149)),
    (57, 'carrot', 'food', 1, (179, 0, 194)),
    (58, 'hot dog', 'food', 1, (209, 99, 106)),
    (59, 'pizza', 'food', 1, (5, 121, 0)),
    (60, 'donut', 'food', 1, (227, 255, 205)),
    (61, 'cake', 'food', 1, (147, 186, 208)),
    (62, 'chair', 'furniture', 1, (153, 69, 1)),
    (63, 'couch', 'furniture', 1, (3, 95, 161)),
    (64, 'potted plant', 'furniture', 1, (163, 255, 0)),
    (65, 'bed', 'furniture', 1, (119, 0, 170)),
    (67, 'dining table', 'furniture', 1, (0, 182, 199)),
    (70, 'toilet', 'furniture', 1, (0, 165, 120)),
    (72, 'tv', 'electronic', 1, (183, 130, 88)),
    (73, 'laptop', 'electronic', 1, (95, 32, 0)),
    (74, 'mouse', 'electronic', 1, (130, 114, 135)),
    (75, 'remote', 'electronic', 1, (110, 129, 133)),
    (76, 'keyboard', 'electronic', 1, (166, 74, 118)),
    (77, 'cell phone', 'electronic', 1, (219, 142, 185)),
    (78, 'microwave', 'appliance', 1, (79, 210, 114)),
    (79, 'oven', 'appliance', 1, (178, 90, 62)),
    (80, 'toaster', 'appliance', 1, (65, 70, 15)),
    (81, 'sink', 'appliance', 1, (127, 167, 115)),
    (82, 'refrigerator', 'appliance', 1, (59, 105, 106)),
    (84, 'book', 'indoor', 1, (142, 108, 45)),
    (85, 'clock', 'indoor', 1, (196, 172, 0)),
    (86, 'vase', 'indoor', 1, (95, 54, 80)),
    (87, 'scissors', 'indoor', 1, (128, 76, 255)),
    (88, 'teddy bear', 'indoor', 1, (201, 57, 1)),
    (89, 'hair drier', 'indoor', 1, (246, 0, 122)),
    (90, 'toothbrush', 'indoor', 1, (191, 162, 208)),
    (92, 'banner', 'textile', 0, (255, 255, 128)),
    (93, 'blanket', 'textile', 0, (147, 211, 203)),
    (95, 'bridge', 'building', 0, (150, 100, 100)),
    (100, 'cardboard', 'raw-material', 0, (168, 171, 172)),
    (107, 'counter', 'furniture-stuff', 0, (146, 112, 198)),
    (109, 'curtain', 'textile', 0, (210, 170, 100)),
    (112, 'door-stuff', 'furniture-stuff', 0, (92, 136, 89)),
    (118, 'floor-wood', 'floor', 0, (218, 88, 184)),
    (119, 'flower', 'plant', 0, (241, 129, 0)),
    (122, 'fruit', 'food-stuff', 0, (217, 17, 255)),
    (125, 'gravel', 'ground', 0, (124, 74, 181)),
    (128, 'house', 'building', 0, (70, 70, 70)),
    (130, 'light', 'furniture-stuff', 0, (255, 228, 255)),
    (133, 'mirror-stuff', 'furniture-stuff', 0, (154, 208, 0)),
    (138, 'net', 'structural', 0, (193, 0, 92)),
    (141, 'pillow', 'textile', 0, (76, 91, 113)),
    (144, 'platform', 'ground', 0, (255, 180, 195)),
    (145, 'playingfield', 'ground', 0, (106, 154, 176)),
    (147, 'railroad', 'ground', 0, (230, 150, 140)),
    (148, 'river', 'water', 0, (60, 143, 255)),
    (149, 'road', 'ground', 0, (128, 64, 128)),
    (151, 'roof', 'building', 0, (92, 82, 55)),
    (154, 'sand', 'ground', 0, (254, 212, 124)),
    (155, 'sea', 'water', 0, (73, 77, 174)),
    (156, 'shelf', 'furniture-stuff', 0, (255, 160, 98)),
    (159, 'snow', 'ground', 0, (255, 255, 255)),
    (161, 'stairs', 'furniture-stuff', 0, (104, 84, 109)),
    (166, 'tent', 'building', 0, (169, 164, 131)),
    (168, 'towel', 'textile', 0, (225, 199, 255)),
    (171, 'wall-brick', 'wall', 0, (137, 54, 74)),
    (175, 'wall-stone', 'wall', 0, (135, 158, 223)),
    (176, 'wall-tile', 'wall', 0, (7, 246, 231)),
    (177, 'wall-wood', 'wall', 0, (107, 255, 200)),
    (178, 'water-other', 'water', 0, (58, 41, 149)),
    (180, 'window-blind', 'window', 0, (183, 121, 142)),
    (181, 'window-other', 'window', 0, (255, 73, 97)),
    (184, 'tree-merged', 'plant', 0, (107, 142, 35)),
    (185, 'fence-merged', 'structural', 0, (190, 153, 153)),
    (186, 'ceiling-merged', 'ceiling', 0, (146, 139, 141)),
    (187, 'sky-other-merged', 'sky', 0, (70, 130, 180)),
    (188, 'cabinet-merged', 'furniture-stuff', 0, (134, 199, 156)),
    (189, 'table-merged', 'furniture-stuff', 0, (209, 226, 140)),
    (190, 'floor-other-merged', 'floor', 0, (96, 36, 108)),
    (191, 'pavement-merged', 'ground', 0, (96, 96, 96)),
    (192, 'mountain-merged', 'solid', 0, (64, 170, 64)),
    (193, 'grass-merged', 'plant', 0, (152, 251, 152)),
    (194, 'dirt-merged', 'ground', 0, (208, 229, 228)),
    (195, 'paper-merged', 'raw-material', 0, (206, 186, 171)),
    (196, 'food-other-merged', 'food-stuff', 0, (152, 161, 64)),
    (197, 'building-other-merged', 'building', 0, (116, 112, 0)),
    (198, 'rock-merged', 'solid', 0, (0, 114, 143)),
    (199, 'wall-other-merged', 'wall', 0, (102, 102, 156)),
    (200, 'rug-merged', 'textile', 0, (250, 141, 255)),)

CATEGORIES: tuple[Category, ...] = tuple(Category(*row) for row in _TABLE)
NUM_CATEGORIES = len(CATEGORIES)  # 133

THING_IDS: tuple[int, ...] = tuple(c.id for c in CATEGORIES if c.isthing)  # 80, ascending
STUFF_IDS: tuple[int, ...] = tuple(c.id for c in CATEGORIES if not c.isthing)  # 53, json order
NUM_THING_CLASSES = len(THING_IDS)  # 80
NUM_STUFF_CLASSES = len(STUFF_IDS)  # 53

# Semantic channels of the panoptic-FPN style label maps and of the semantic head.
SEMANTIC_VOID = 0
SEMANTIC_THING = NUM_STUFF_CLASSES + 1  # 54
NUM_SEMANTIC_CHANNELS = NUM_STUFF_CLASSES + 2  # 55

_BY_ID = {c.id: c for c in CATEGORIES}
_THING_TO_CONTIGUOUS = {cid: k + 1 for k, cid in enumerate(THING_IDS)}
_STUFF_TO_CHANNEL = {cid: k + 1 for k, cid in enumerate(STUFF_IDS)}

# Lookup arrays (numpy, usable as jnp constants).
# contiguous thing id (0..80) -> COCO id (0 for background)
CONTIGUOUS_TO_COCO = np.array((0,) + THING_IDS, dtype=np.int32)
# semantic channel (0..54) -> COCO stuff id (0 for void and for the merged thing channel)
SEMANTIC_TO_COCO = np.array((0,) + STUFF_IDS + (0,), dtype=np.int32)
# COCO id (0..200) -> semantic channel; unknown ids map to void
COCO_TO_SEMANTIC = np.zeros(max(_BY_ID) + 1, dtype=np.int32)
for _cid, _ch in _STUFF_TO_CHANNEL.items():
  COCO_TO_SEMANTIC[_cid] = _ch
for _cid in THING_IDS:
  COCO_TO_SEMANTIC[_cid] = SEMANTIC_THING
# COCO id (0..200) -> contiguous thing id (0 for stuff / unknown)
COCO_TO_CONTIGUOUS = np.zeros(max(_BY_ID) + 1, dtype=np.int32)
for _cid, _k in _THING_TO_CONTIGUOUS.items():
  COCO_TO_CONTIGUOUS[_cid] = _k
# COCO id (0..200) -> 1-based index in the json list (panopticapi-style 133-class labels)
COCO_TO_INDEX133 = np.zeros(max(_BY_ID) + 1, dtype=np.int32)
for _i, _c in enumerate(CATEGORIES):
  COCO_TO_INDEX133[_c.id] = _i + 1


def category(cid: int) -> Category:
  """The category with COCO id ``cid``; KeyError naming the id if unknown."""
  try:
    return _BY_ID[int(cid)]
  except KeyError:
    raise KeyError(f"unknown COCO panoptic category id {cid}") from None


def is_thing(cid: int) -> bool:
  return bool(category(cid).isthing)


def contiguous_to_coco(k: int) -> int:
  """Contiguous thing id 1..80 -> COCO category id."""
  if not 1 <= int(k) <= NUM_THING_CLASSES:
    raise ValueError(f"contiguous thing id must be in 1..{NUM_THING_CLASSES}, got {k}")
  return THING_IDS[int(k) - 1]


def coco_to_contiguous(cid: int) -> int:
  """COCO thing category id -> contiguous id 1..80."""
  if int(cid) not in _THING_TO_CONTIGUOUS:
    raise KeyError(f"COCO category id {cid} is not a thing category")
  return _THING_TO_CONTIGUOUS[int(cid)]


def semantic_channel(cid: int) -> int:
  """COCO category id -> semantic channel (1..53 stuff, 54 for any thing)."""
  c = category(cid)
  return SEMANTIC_THING if c.isthing else _STUFF_TO_CHANNEL[c.id]


def semantic_to_coco(channel: int) -> int:
  """Semantic stuff channel 1..53 -> COCO stuff id."""
  if not 1 <= int(channel) <= NUM_STUFF_CLASSES:
    raise ValueError(f"stuff channel must be in 1..{NUM_STUFF_CLASSES}, got {channel}")
  return STUFF_IDS[int(channel) - 1]


def categories_json() -> list[dict]:
  """The 133 category dicts exactly as panopticapi's json lists them (key order included)."""
  return [{"supercategory": c.supercategory, "color": list(c.color), "isthing": c.isthing,
           "id": c.id, "name": c.name} for c in CATEGORIES]


def thing_categories_json() -> list[dict]:
  """The 80 thing categories in COCO instances format (id, name, supercategory)."""
  return [{"supercategory": c.supercategory, "id": c.id, "name": c.name}
          for c in CATEGORIES if c.isthing]
