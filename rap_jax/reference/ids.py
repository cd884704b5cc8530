"""The original's segment ids, replayed with plain loops: its id generator and its run loop.

SPEC §4.3 and `engine/combine_methods.py`. Written independently of `rap_jax.panoptic_io` so
that tests can check the writer's ids against it.

When the original draws (RAPNet/RAP @ 83662d8, `panoptic_benchmark/engine/combine_methods.py`):

* one `IdGenerator` per run (`inference_ps.py` / `inference_ps_ocfusion.py` build it once before
  the image loop), shared by every image in data-loader order;
* things: `get_id(label)` right before `pan_segm_id[mask] = segment_id`, i.e. once per instance
  that passed every rejection test of its fusion (heuristic line 55, RAP line 145, OCFusion
  line 233). Instances rejected earlier (below the confidence threshold, zero area, overlap /
  same-label / duplicate / remaining-share tests) never draw;
* RAP and OCFusion then drop, after the instance loop, the segments left with no pixel (taken
  by later instances): those drew an id that stays consumed (lines 154-161, 241-248);
* stuff: `get_id(label)` for every stuff candidate that keeps >= STUFF_AREA_LIMIT free pixels
  (lines 68, 169, 256); a stuff category returns its fixed colour and touches neither the RNG
  nor the taken set, so the stuff stage never changes later ids;
* a thing colour is the category colour the first time, afterwards `colour + randint(-30, 31,
  size=3)` from numpy's global legacy RNG, clipped to [0, 255], redrawn while taken (3 randint
  values per try, rejected tries included).

Never imported by jitted code (tests/test_imports.py).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Mapping, Sequence

import numpy as np

from rap_jax.data import categories as cats
from rap_jax.reference import fusion as fusion_ref


class PanopticApiIdGenerator:
  """panopticapi `IdGenerator` semantics, drawing from numpy's GLOBAL legacy RNG (like the original).

  Seed with `numpy.random.seed(seed)` (or use `seeded_global_rng`) to replay a run.
  """

  def __init__(self, categories: Mapping[int, Mapping] | None = None):
    if categories is None:
      categories = {c.id: {"isthing": c.isthing, "color": list(c.color)} for c in cats.CATEGORIES}
    self.categories = categories
    # panopticapi writes set([0, 0, 0]), which is {0}; then every stuff colour
    self.taken = {0}
    for info in categories.values():
      if not info["isthing"]:
        self.taken.add(tuple(int(v) for v in info["color"]))
    self.draws: list[int] = []            # category of every get_id call, in order

  def _colour(self, category_id: int) -> tuple[int, int, int]:
    info = self.categories[category_id]
    base = [int(v) for v in info["color"]]
    if not info["isthing"]:
      return tuple(base)
    if tuple(base) not in self.taken:
      self.taken.add(tuple(base))
      return tuple(base)
    while True:
      jitter = np.random.randint(low=-30, high=30 + 1, size=3)
      colour = tuple(int(min(255, max(0, b + int(d)))) for b, d in zip(base, jitter))
      if colour not in self.taken:
        self.taken.add(colour)
        return colour

  def get_id(self, category_id: int) -> int:
    self.draws.append(int(category_id))
    r, g, b = self._colour(int(category_id))
    return r + 256 * g + 256 * 256 * b


@contextlib.contextmanager
def seeded_global_rng(seed: int) -> Iterator[None]:
  """`numpy.random.seed(seed)` for the block; the global RNG state is restored afterwards."""
  saved = np.random.get_state()
  np.random.seed(seed)
  try:
    yield
  finally:
    np.random.set_state(saved)


def original_run(method: str, images: Sequence[dict], *, seed: int = 0,
                 **thresholds) -> tuple[list[fusion_ref.ReferenceResult], list[list[int]]]:
  """The original's loop over a run: one generator, images in order, `numpy.random.seed(seed)`.

  images: per image a dict with masks [N, H, W], scores [N], labels [N], semantic [H, W] and,
    as the method needs, relation [N], occlusion [N, N], valid [N] (keys as in
    `fusion_ref.fuse_reference`).
  thresholds: confidence_thr, overlap_thr, large_overlap_thr, stuff_area_limit, ...
  Returns the per-image reference results (`pan` holds the real panoptic ids) and, per image, the
  categories of all `get_id` calls in order (also those of segments dropped later).
  """
  results, draws = [], []
  with seeded_global_rng(seed):
    generator = PanopticApiIdGenerator()
    for image in images:
      start = len(generator.draws)
      results.append(fusion_ref.fuse_reference(
          method, image["masks"], image["scores"], image["labels"], image["semantic"],
          relation=image.get("relation"), occlusion=image.get("occlusion"),
          valid=image.get("valid"), new_id=generator.get_id, **thresholds))
      draws.append(generator.draws[start:])
  return results, draws
