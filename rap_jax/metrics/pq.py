"""Panoptic quality (PQ, SQ, RQ) with panopticapi's semantics (SPEC §8), vectorised.

Per image, the two id maps are cut into row-major runs of a constant (GT id, prediction id) pair
(two comparisons per pixel; ~60x fewer runs than pixels), run ids are relabelled to small indices
(0 = id absent from the JSON, 1 = VOID, 2.. = segments in ascending id) and one weighted
`bincount` of ``gt_index * num_pred + pred_index`` gives every (GT, prediction) intersection.
Matching, crowd and VOID rules then work on the few non-zero pairs:

* TP: same category, GT not crowd, ``IoU > 0.5`` with ``union = |p| + |g| - |p∩g| - |p∩VOID|``;
  IoU summed per category. GT areas come from the GT JSON ``area`` (the PNG count if absent).
* FN: unmatched non-crowd GT segments. A crowd GT segment is remembered per category (the last one
  listed wins).
* FP: unmatched predictions, except when ``(|p∩VOID| + |p∩crowd of its category|) / |p| > 0.5``.
* Per category ``PQ = ΣIoU / (TP + FP/2 + FN/2)``, ``SQ = ΣIoU / TP``, ``RQ = TP / (TP + FP/2 +
  FN/2)``; categories with ``TP + FP + FN = 0`` are left out of the All / Things / Stuff averages.

Entry points: `pq_compute` (panopticapi's signature and result; files, a process pool over
chunks of images, memory independent of the number of images), `PQAccumulator` (in-memory id
maps, used by eval mode, the same per-image core) and the command line::

    python -m rap_jax.metrics.pq --gt-json G --gt-folder GF --pred-json P --pred-folder PF \\
        [--output out.json] [--workers N]

PNG decoding, the report and the command line live in `rap_jax.metrics.pq_io`; their public
names are importable from here too.

Where panopticapi has no defined behaviour we say so: a group without any counted category
(e.g. no stuff at all) reports 0.0 with ``n = 0`` (panopticapi divides by zero; hotcoco reports
-1.0); a prediction JSON that lists an image twice, an image's segments listing an id twice, or a
JSON segment with id 0 (VOID) are errors (panopticapi silently keeps the last / treats VOID as a
segment).
"""
from __future__ import annotations

import collections
import concurrent.futures
import ctypes
import dataclasses
import json
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from rap_jax.metrics import pq_io
from rap_jax.metrics.pq_io import (PngIdReader, format_table, id_to_rgb, read_panoptic_png,  # noqa: F401
                                   read_png_pil, results_json, rgb_to_id)

OFFSET = 256 * 256 * 256  # ids are 24 bit (R + 256 G + 65536 B)
VOID = 0
_UNLISTED, _VOID_INDEX, _FIRST = 0, 1, 2  # compact indices: id not in JSON, VOID, first segment
_MAX_DENSE_BINS = 1 << 22  # larger joint histograms fall back to np.unique
_CHUNK = 16  # images per pool task
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


class PQInputError(KeyError, ValueError):
  """Inconsistent panoptic input (panopticapi raises KeyError for these; hotcoco ValueError)."""

  def __str__(self) -> str:
    return str(self.args[0]) if self.args else ""


# ------------------------------------------------------------------------------------------------
# Categories and per-category counts.


@dataclasses.dataclass(frozen=True)
class CategoryTable:
  """The evaluated categories (the GT JSON's list, in its order)."""
  ids: tuple[int, ...]
  isthing: tuple[bool, ...]

  @classmethod
  def from_json(cls, categories: Iterable[dict]) -> "CategoryTable":
    cats = list(categories)
    ids = tuple(int(c["id"]) for c in cats)
    if len(set(ids)) != len(ids):
      raise PQInputError(f"categories list an id twice: {sorted(ids)}")
    return cls(ids, tuple(int(c.get("isthing", 0)) == 1 for c in cats))

  @property
  def index(self) -> dict[int, int]:
    return {cid: k for k, cid in enumerate(self.ids)}

  def __len__(self) -> int:
    return len(self.ids)


@dataclasses.dataclass
class PQStat:
  """Per-category sums over images: tp, fp, fn [C] int64 and iou [C] float64."""
  tp: np.ndarray
  fp: np.ndarray
  fn: np.ndarray
  iou: np.ndarray

  @classmethod
  def zeros(cls, num_categories: int) -> "PQStat":
    z = np.zeros(num_categories, np.int64)
    return cls(z.copy(), z.copy(), z.copy(), np.zeros(num_categories, np.float64))

  def __iadd__(self, other: "PQStat") -> "PQStat":
    self.tp += other.tp
    self.fp += other.fp
    self.fn += other.fn
    self.iou += other.iou
    return self

  def results(self, table: CategoryTable) -> dict[str, Any]:
    """panopticapi's result: {'All'|'Things'|'Stuff': {pq, sq, rq, n}, 'per_class': {id: {pq, sq, rq}}}."""
    results: dict[str, Any] = {}
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
      pq = sq = rq = 0.0
      n = 0
      per_class = {}
      for k, cid in enumerate(table.ids):
        if isthing is not None and table.isthing[k] != isthing:
          continue
        tp, fp, fn, iou = int(self.tp[k]), int(self.fp[k]), int(self.fn[k]), float(self.iou[k])
        if tp + fp + fn == 0:
          per_class[cid] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
          continue
        n += 1
        denom = tp + 0.5 * fp + 0.5 * fn
        per_class[cid] = {"pq": iou / denom, "sq": iou / tp if tp != 0 else 0.0, "rq": tp / denom}
        pq += per_class[cid]["pq"]
        sq += per_class[cid]["sq"]
        rq += per_class[cid]["rq"]
      if n:
        results[name] = {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}
      else:
        results[name] = {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
      if name == "All":
        results["per_class"] = per_class
    return results


# ------------------------------------------------------------------------------------------------
# The per-image core.


class _Segments:
  """One side's JSON segments sorted by id: ids [K] int64, cat [K] (C = unknown), crowd, area."""

  def __init__(self, segments: Sequence[dict], cat_index: dict[int, int], num_cats: int,
               image_id: Any, side: str):
    k = len(segments)
    ids = np.fromiter((s["id"] for s in segments), np.int64, k)
    if k and (ids == VOID).any():
      raise PQInputError(f"In the image with ID {image_id} the {side} JSON lists segment ID 0, "
                         "which is VOID.")
    order = np.argsort(ids, kind="stable")
    self.ids = ids[order]
    if k > 1 and (self.ids[1:] == self.ids[:-1]).any():
      dup = int(self.ids[1:][self.ids[1:] == self.ids[:-1]][0])
      raise PQInputError(f"In the image with ID {image_id} the {side} JSON lists segment ID {dup} "
                         "twice.")
    self.category_ids = [segments[i]["category_id"] for i in order]
    self.cat = np.fromiter((cat_index.get(c, num_cats) for c in self.category_ids), np.int64, k)
    self.crowd = np.fromiter((segments[i].get("iscrowd", 0) == 1 for i in order), bool, k)
    # JSON areas where given (GT); NaN = take the PNG count.
    self.area = np.fromiter((segments[i].get("area", np.nan) for i in order), np.float64, k)
    self.rank = order  # position in the JSON list, for "last crowd wins"

  def __len__(self) -> int:
    return len(self.ids)


def _runs(gt_ids: np.ndarray, pred_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Row-major runs of a constant (GT id, prediction id) pair: ([R] GT ids, [R] ids, [R] lengths).

  Segments are large and few, so there are ~60x fewer runs than pixels: relabelling and counting
  the runs instead of the pixels leaves two comparisons per pixel.
  """
  g, p = gt_ids.reshape(-1), pred_ids.reshape(-1)
  n = g.size
  if n == 0:
    return g, p, np.zeros(0, np.int64)
  change, other = _scratch(n - 1)
  np.not_equal(g[1:], g[:-1], out=change)
  np.not_equal(p[1:], p[:-1], out=other)
  change |= other
  starts = np.empty(int(np.count_nonzero(change)) + 1, np.int64)
  starts[0] = 0
  starts[1:] = np.flatnonzero(change)
  starts[1:] += 1
  lengths = np.diff(starts, append=n)
  return g[starts], p[starts], lengths


_SCRATCH = threading.local()


def _scratch(n: int) -> tuple[np.ndarray, np.ndarray]:
  """Two [n] bool buffers, reused per thread (fresh large arrays cost page faults)."""
  buf = getattr(_SCRATCH, "buf", None)
  if buf is None or buf.shape[1] < n:
    buf = _SCRATCH.buf = np.empty((2, n), bool)
  return buf[0, :n], buf[1, :n]


def _compact(ids: np.ndarray, seg_ids: np.ndarray) -> np.ndarray:
  """Ids -> compact indices: 0 unlisted, 1 VOID, 2 + rank among the sorted `seg_ids`."""
  out = np.where(ids == VOID, _VOID_INDEX, _UNLISTED)
  if len(seg_ids):
    pos = np.searchsorted(seg_ids, ids)
    np.minimum(pos, len(seg_ids) - 1, out=pos)
    found = seg_ids[pos] == ids
    out[found] = pos[found] + _FIRST
  return out


def _joint_counts(gidx: np.ndarray, pidx: np.ndarray, lengths: np.ndarray, num_g: int,
                  num_p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Compact indices of runs -> non-zero (row, col, count) of the [num_g, num_p] joint histogram."""
  joint = gidx * num_p + pidx
  if num_g * num_p <= _MAX_DENSE_BINS:
    hist = np.bincount(joint, weights=lengths, minlength=num_g * num_p)
    keys = np.flatnonzero(hist)
    counts = hist[keys]
  else:
    keys, inverse = np.unique(joint, return_inverse=True)
    counts = np.bincount(inverse.reshape(-1), weights=lengths)
  return keys // num_p, keys % num_p, counts.astype(np.int64)  # float sums of ints < 2^53: exact


def image_stat(image_id: Any, gt_ids: np.ndarray, gt_segments: Sequence[dict],
               pred_ids: np.ndarray, pred_segments: Sequence[dict], table: CategoryTable,
               cat_index: dict[int, int] | None = None) -> PQStat:
  """One image's per-category counts (SPEC §8), with panopticapi's consistency errors.

  gt_ids, pred_ids: [H, W] integer segment ids in [0, 2^24) (0 = VOID).
  gt_segments: [{id, category_id, iscrowd, area?}]; pred_segments: [{id, category_id}].
  Returns a PQStat over `table`'s categories (GT segments of other categories are ignored).
  """
  if gt_ids.shape != pred_ids.shape:
    raise PQInputError(f"In the image with ID {image_id} the GT map is {gt_ids.shape[:2]} but the "
                       f"prediction is {pred_ids.shape[:2]}.")
  cat_index = table.index if cat_index is None else cat_index
  num_c = len(table)
  gt = _Segments(gt_segments, cat_index, num_c, image_id, "GT")
  pred = _Segments(pred_segments, cat_index, num_c, image_id, "prediction")
  num_g, num_p = _FIRST + len(gt), _FIRST + len(pred)
  gt_run, pred_run, lengths = _runs(gt_ids, pred_ids)
  pidx = _compact(pred_run, pred.ids)
  rows, cols, inter = _joint_counts(_compact(gt_run, gt.ids), pidx, lengths, num_g, num_p)

  # Prediction checks, in panopticapi's order: PNG ids in ascending order (unlisted id or unknown
  # category, whichever comes first), then JSON segments missing from the PNG.
  pred_area = np.bincount(cols, weights=inter, minlength=num_p).astype(np.int64)
  seg_area = pred_area[_FIRST:]
  bad_cat = (pred.cat == num_c) & (seg_area > 0)
  if pred_area[_UNLISTED] > 0 or bad_cat.any():
    first_unlisted = int(pred_run[pidx == _UNLISTED].min()) if pred_area[_UNLISTED] > 0 else OFFSET
    first_bad = int(pred.ids[bad_cat][0]) if bad_cat.any() else OFFSET
    if first_unlisted < first_bad:
      raise PQInputError(f"In the image with ID {image_id} segment with ID {first_unlisted} is "
                         "presented in PNG and not presented in JSON.")
    k = int(np.flatnonzero(bad_cat)[0])
    raise PQInputError(f"In the image with ID {image_id} segment with ID {first_bad} has unknown "
                       f"category_id {pred.category_ids[k]}.")
  if (seg_area == 0).any():
    missing = [int(i) for i in pred.ids[seg_area == 0]]
    raise PQInputError(f"In the image with ID {image_id} the following segment IDs {missing} are "
                       "presented in JSON and not presented in PNG.")

  gt_area = np.bincount(rows, weights=inter, minlength=num_g)[_FIRST:]
  gt_area = np.where(np.isnan(gt.area), gt_area, gt.area)
  void_inter = np.zeros(num_p, np.float64)  # |pred ∩ VOID| per compact pred index
  on_void = rows == _VOID_INDEX
  void_inter[cols[on_void]] = inter[on_void]

  # Matching over pairs of listed segments.
  pair = (rows >= _FIRST) & (cols >= _FIRST)
  g, p, n = rows[pair] - _FIRST, cols[pair] - _FIRST, inter[pair].astype(np.float64)
  gcat = gt.cat[g]
  same = (gcat == pred.cat[p]) & ~gt.crowd[g] & (gcat < num_c)
  g, p, n, gcat = g[same], p[same], n[same], gcat[same]
  union = seg_area[p] + gt_area[g] - n - void_inter[p + _FIRST]
  with np.errstate(divide="ignore", invalid="ignore"):
    iou = n / union
  match = iou > 0.5
  tp = np.bincount(gcat[match], minlength=num_c + 1)
  iou_sum = np.bincount(gcat[match], weights=iou[match], minlength=num_c + 1)
  gt_hit = np.zeros(len(gt), bool)
  gt_hit[g[match]] = True
  pred_hit = np.zeros(len(pred), bool)
  pred_hit[p[match]] = True

  fn = np.bincount(gt.cat[~gt_hit & ~gt.crowd], minlength=num_c + 1)

  # Unmatched predictions: ignored when mostly VOID or crowd of their own category.
  crowd_of = np.full(num_c + 1, -1, np.int64)  # category -> crowd GT index (last listed wins)
  crowd = np.flatnonzero(gt.crowd & ~gt_hit)
  crowd = crowd[np.argsort(gt.rank[crowd])]
  for k in crowd:
    crowd_of[gt.cat[k]] = k
  ignored = void_inter[_FIRST:].copy()
  gi, pi = rows - _FIRST, cols - _FIRST
  on_crowd = (gi >= 0) & (pi >= 0)
  on_crowd[on_crowd] = crowd_of[pred.cat[pi[on_crowd]]] == gi[on_crowd]
  ignored[pi[on_crowd]] += inter[on_crowd]
  counted = ~pred_hit & ~(ignored / seg_area > 0.5)
  fp = np.bincount(pred.cat[counted], minlength=num_c + 1)
  return PQStat(tp[:num_c].astype(np.int64), fp[:num_c].astype(np.int64),
                fn[:num_c].astype(np.int64), iou_sum[:num_c])


# ------------------------------------------------------------------------------------------------
# In-memory accumulation (eval mode).


class PQAccumulator:
  """Sums per-image counts; `result()` gives panopticapi's dict. Not thread safe.

  categories: the category dicts (id, isthing) to evaluate; default the 133 COCO panoptic ones.
  """

  def __init__(self, categories: Sequence[dict] | None = None):
    if categories is None:
      from rap_jax.data.categories import categories_json
      categories = categories_json()
    self.table = CategoryTable.from_json(categories)
    self._cat_index = self.table.index
    self.stat = PQStat.zeros(len(self.table))
    self._seen: set = set()

  @property
  def num_images(self) -> int:
    return len(self._seen)

  def add(self, image_id: Any, gt_ids: np.ndarray, gt_segments: Sequence[dict],
          pred_ids: np.ndarray, pred_segments: Sequence[dict]) -> None:
    """Adds one image. gt_ids, pred_ids: [H, W] integer ids in [0, 2^24), 0 = VOID."""
    gt_ids, pred_ids = _as_ids(gt_ids, image_id, "GT"), _as_ids(pred_ids, image_id, "prediction")
    stat = image_stat(image_id, gt_ids, gt_segments, pred_ids, pred_segments, self.table,
                      self._cat_index)
    self._mark(image_id)
    self.stat += stat

  def add_stat(self, image_id: Any, stat: PQStat) -> None:
    """Adds counts computed elsewhere (e.g. by a worker process) for one image."""
    self._mark(image_id)
    self.stat += stat

  def _mark(self, image_id: Any) -> None:
    if image_id in self._seen:
      raise PQInputError(f"The image with ID {image_id} was added twice.")
    self._seen.add(image_id)

  def merge(self, other: "PQAccumulator") -> None:
    """Adds another accumulator's images (e.g. from another host)."""
    if other.table != self.table:
      raise ValueError("cannot merge accumulators over different categories")
    twice = self._seen & other._seen
    if twice:
      raise PQInputError(f"The images with IDs {sorted(twice)[:10]} were added twice.")
    self._seen |= other._seen
    self.stat += other.stat

  def result(self) -> dict[str, Any]:
    return self.stat.results(self.table)


def _as_ids(ids: np.ndarray, image_id: Any, side: str) -> np.ndarray:
  ids = np.asarray(ids)
  if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f"image {image_id}: {side} ids must be an [H, W] integer array, got "
                     f"{ids.dtype} {ids.shape}")
  if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= OFFSET):
    raise ValueError(f"image {image_id}: {side} ids must be in [0, 2^24)")
  return ids


# ------------------------------------------------------------------------------------------------
# Files.


def _eval_chunk(task: tuple) -> tuple[np.ndarray, np.ndarray]:
  """Worker: a chunk of (gt_ann, pred_ann) pairs -> ([3, C] tp, fp, fn sums, [n, C] IoU sums).

  IoU sums stay per image so that the caller adds them in image order: the same float sums as
  one image at a time (PQAccumulator), for any number of workers.
  """
  pairs, gt_folder, pred_folder, table = task
  read = pq_io.process_reader()
  cat_index = table.index
  counts = np.zeros((3, len(table)), np.int64)
  iou = np.zeros((len(pairs), len(table)), np.float64)
  for k, (gt_ann, pred_ann) in enumerate(pairs):
    stat = image_stat(gt_ann["image_id"], read(os.path.join(gt_folder, gt_ann["file_name"]), slot=0),
                      gt_ann["segments_info"],
                      read(os.path.join(pred_folder, pred_ann["file_name"]), slot=1),
                      pred_ann["segments_info"], table, cat_index)
    counts[0] += stat.tp
    counts[1] += stat.fp
    counts[2] += stat.fn
    iou[k] = stat.iou
  return counts, iou


def _init_worker() -> None:
  """Pool worker set-up: glibc malloc that keeps freed memory, and the PNG reader.

  Each decode allocates a few ~1 MB buffers (pyspng); with glibc's default trimming, every one
  costs fresh pages (page faults doubled the CPU time). Only the pool's own processes are tuned.
  No OpenCV call here: after a fork its thread pool can deadlock (cv2.setNumThreads did).
  """
  try:
    libc = ctypes.CDLL(None)
    libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    libc.mallopt(_M_TRIM_THRESHOLD, 128 << 20)
  except (OSError, AttributeError):  # pragma: no cover - not glibc
    pass
  pq_io.process_reader()


def default_workers() -> int:
  """CPUs this process may use."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # pragma: no cover - not Linux
    return os.cpu_count() or 1


def _mp_context() -> multiprocessing.context.BaseContext:
  # fork is fastest, but forking a process that has started JAX's threads is unsafe.
  if "jax" in sys.modules or "fork" not in multiprocessing.get_all_start_methods():
    return multiprocessing.get_context("spawn")
  return multiprocessing.get_context("fork")


def _chunk_stats(pairs: list[tuple[dict, dict]], gt_folder: str, pred_folder: str,
                 table: CategoryTable, workers: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """`_eval_chunk` over chunks of `pairs`, in order; a process pool when workers > 1."""
  tasks = ((pairs[i:i + _CHUNK], gt_folder, pred_folder, table)
           for i in range(0, len(pairs), _CHUNK))
  workers = min(workers, -(-len(pairs) // _CHUNK))
  if workers <= 1:
    yield from map(_eval_chunk, tasks)
    return
  with concurrent.futures.ProcessPoolExecutor(workers, mp_context=_mp_context(),
                                              initializer=_init_worker) as pool:
    # Bounded look-ahead: at most 4 chunks per worker in flight (memory independent of images).
    pending: collections.deque[concurrent.futures.Future] = collections.deque()
    for task in tasks:
      pending.append(pool.submit(_eval_chunk, task))
      if len(pending) >= 4 * workers:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()


def _match_annotations(gt_json: dict, pred_json: dict, skip_missing: bool) -> list[tuple[dict, dict]]:
  preds: dict[Any, dict] = {}
  for ann in pred_json["annotations"]:
    if ann["image_id"] in preds:
      raise PQInputError(f"The prediction JSON lists the image with ID {ann['image_id']} twice.")
    preds[ann["image_id"]] = ann
  pairs, seen = [], set()
  for gt_ann in gt_json["annotations"]:
    image_id = gt_ann["image_id"]
    if image_id in seen:
      raise PQInputError(f"The GT JSON lists the image with ID {image_id} twice.")
    seen.add(image_id)
    if image_id not in preds:
      if skip_missing:
        continue
      raise PQInputError(f"no prediction for the image with id: {image_id}")
    pairs.append((gt_ann, preds[image_id]))
  return pairs


def pq_compute(gt_json_file: str, pred_json_file: str, gt_folder: str | None = None,
               pred_folder: str | None = None, *, workers: int | None = None,
               skip_missing: bool = False, verbose: bool = True) -> dict[str, Any]:
  """PQ of a prediction JSON + PNG folder against the GT ones, as panopticapi's `pq_compute`.

  Folders default to the JSON path without ``.json``. `workers` processes decode and count images
  (default: the CPUs available). `skip_missing` skips GT images without a prediction, as RAP's
  `ps_eval.py` does (panopticapi raises). Returns {'All'|'Things'|'Stuff': {pq, sq, rq, n},
  'per_class': {category_id: {pq, sq, rq}}}; prints the table when `verbose`.
  """
  start = time.time()
  stat, table = pq_stat_files(gt_json_file, pred_json_file, gt_folder, pred_folder,
                              workers=workers, skip_missing=skip_missing)
  results = stat.results(table)
  if verbose:
    print(format_table(results))
    print(f"Time elapsed: {time.time() - start:0.2f} seconds")
  return results


def pq_stat_files(gt_json_file: str, pred_json_file: str, gt_folder: str | None = None,
                  pred_folder: str | None = None, *, workers: int | None = None,
                  skip_missing: bool = False) -> tuple[PQStat, CategoryTable]:
  """The per-category counts behind `pq_compute` (same arguments)."""
  with open(gt_json_file) as f:
    gt_json = json.load(f)
  with open(pred_json_file) as f:
    pred_json = json.load(f)
  gt_folder = gt_json_file.replace(".json", "") if gt_folder is None else gt_folder
  pred_folder = pred_json_file.replace(".json", "") if pred_folder is None else pred_folder
  if not os.path.isdir(gt_folder):
    raise FileNotFoundError(f"Folder {gt_folder} with ground truth segmentations doesn't exist")
  if not os.path.isdir(pred_folder):
    raise FileNotFoundError(f"Folder {pred_folder} with predicted segmentations doesn't exist")
  table = CategoryTable.from_json(gt_json["categories"])
  pairs = _match_annotations(gt_json, pred_json, skip_missing)
  workers = default_workers() if workers is None else max(1, int(workers))
  stat = PQStat.zeros(len(table))
  for counts, iou in _chunk_stats(pairs, gt_folder, pred_folder, table, workers):
    stat.tp += counts[0]
    stat.fp += counts[1]
    stat.fn += counts[2]
    for row in iou:  # image by image, as PQAccumulator adds
      stat.iou += row
  return stat, table


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """The command line (see the module docstring and `pq_io.main`)."""
  return pq_io.main(argv, stat_files=pq_stat_files)


if __name__ == "__main__":
  main()
