"""PQ (SPEC §8): ours vs hotcoco vs the reference loop on random sets, hand-made cases, errors."""
import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from rap_jax.data.categories import categories_json
from rap_jax.metrics import pq, pq_io
from rap_jax.reference import pq as ref

SMALL_CATS = [{"id": i, "name": f"thing{i}", "isthing": 1} for i in (1, 2, 3, 5, 8, 13)] + [
    {"id": i, "name": f"stuff{i}", "isthing": 0} for i in (100, 101, 102, 104)]
GROUPS = ("All", "Things", "Stuff")


def hotcoco_pq(paths):
  hotcoco = pytest.importorskip("hotcoco.panoptic")  # a test requirement (setup.py extras)
  with contextlib.redirect_stdout(io.StringIO()):
    return hotcoco.pq_compute(paths["gt_json"], paths["pred_json"], paths["gt_folder"],
                              paths["pred_folder"])


def assert_results_close(ours, other, tol=1e-12, absent=0.0):
  for g in GROUPS:
    assert ours[g]["n"] == other[g]["n"], g
    for k in ("pq", "sq", "rq"):
      assert abs(ours[g][k] - other[g][k]) <= tol, (g, k, ours[g][k], other[g][k])
  assert set(ours["per_class"]) == set(other["per_class"])
  for cid, v in ours["per_class"].items():
    o = other["per_class"][cid]
    if o["pq"] == absent and o["sq"] == absent and o["rq"] == absent:  # category never counted
      assert v == {"pq": 0.0, "sq": 0.0, "rq": 0.0}, cid
      continue
    for k in ("pq", "sq", "rq"):
      assert abs(v[k] - o[k]) <= tol, (cid, k, v[k], o[k])


@pytest.fixture(scope="module")
def random_sets(tmp_path_factory):
  """Three random GT/prediction sets: small category table, full COCO table, larger images."""
  root = tmp_path_factory.mktemp("pq_random")
  specs = [dict(num_images=30, categories=SMALL_CATS, seed=1, height=48, width=64, num_segments=10),
           dict(num_images=20, categories=categories_json(), seed=2, height=60, width=80,
                num_segments=14),
           dict(num_images=6, categories=SMALL_CATS, seed=3, height=120, width=160,
                num_segments=24)]
  return [ref.write_dataset(str(root / f"set{i}"), **spec) for i, spec in enumerate(specs)]


def test_random_sets_match_hotcoco_and_reference(random_sets):
  for paths in random_sets:
    ours = pq.pq_compute(paths["gt_json"], paths["pred_json"], paths["gt_folder"],
                         paths["pred_folder"], workers=1, verbose=False)
    assert_results_close(ours, hotcoco_pq(paths), absent=-1.0)
    reference = ref.pq_compute(paths["gt_json"], paths["pred_json"], paths["gt_folder"],
                               paths["pred_folder"])
    assert_results_close(ours, reference)
    assert 0.2 < ours["All"]["pq"] < 0.95 and ours["Things"]["n"] > 0 and ours["Stuff"]["n"] > 0


def test_random_sets_exercise_the_special_cases(random_sets):
  """The generated data contain crowd, VOID, unmatched and one-sided categories."""
  gt = json.load(open(random_sets[0]["gt_json"]))
  pred = json.load(open(random_sets[0]["pred_json"]))
  segs = [s for a in gt["annotations"] for s in a["segments_info"]]
  assert any(s["iscrowd"] for s in segs)
  one_sided = [0, 0]  # images with a category only predicted / only in GT
  for g, p in zip(gt["annotations"], pred["annotations"]):
    gc = {s["category_id"] for s in g["segments_info"]}
    pc = {s["category_id"] for s in p["segments_info"]}
    one_sided[0] += bool(pc - gc)
    one_sided[1] += bool(gc - pc)
  assert min(one_sided) > 0
  stat, _ = pq.pq_stat_files(random_sets[0]["gt_json"], random_sets[0]["pred_json"],
                             random_sets[0]["gt_folder"], random_sets[0]["pred_folder"], workers=1)
  assert stat.tp.sum() > 0 and stat.fp.sum() > 0 and stat.fn.sum() > 0
  has_void = any((ref.read_ids(os.path.join(random_sets[0]["gt_folder"], a["file_name"])) == 0).any()
                 for a in gt["annotations"][:10])
  assert has_void


def test_workers_and_accumulator_are_bitwise_equal(random_sets):
  paths = random_sets[1]
  serial = pq.pq_compute(paths["gt_json"], paths["pred_json"], paths["gt_folder"],
                         paths["pred_folder"], workers=1, verbose=False)
  parallel = pq.pq_compute(paths["gt_json"], paths["pred_json"], paths["gt_folder"],
                           paths["pred_folder"], workers=2, verbose=False)
  assert serial == parallel
  gt = json.load(open(paths["gt_json"]))
  preds = {a["image_id"]: a for a in json.load(open(paths["pred_json"]))["annotations"]}
  acc = pq.PQAccumulator(gt["categories"])
  for a in gt["annotations"]:
    p = preds[a["image_id"]]
    acc.add(a["image_id"], ref.read_ids(os.path.join(paths["gt_folder"], a["file_name"])),
            a["segments_info"], ref.read_ids(os.path.join(paths["pred_folder"], p["file_name"])),
            p["segments_info"])
  assert acc.num_images == len(gt["annotations"])
  assert acc.result() == serial


def test_unique_fallback_for_large_joint_histograms(random_sets, monkeypatch):
  paths = random_sets[2]
  args = (paths["gt_json"], paths["pred_json"], paths["gt_folder"], paths["pred_folder"])
  dense = pq.pq_compute(*args, workers=1, verbose=False)
  monkeypatch.setattr(pq, "_MAX_DENSE_BINS", 0)
  assert pq.pq_compute(*args, workers=1, verbose=False) == dense


# ------------------------------------------------------------------------------------------------
# Hand-made cases (numbers worked out by hand).

CATS = [{"id": 1, "name": "a", "isthing": 1}, {"id": 2, "name": "b", "isthing": 0},
        {"id": 3, "name": "c", "isthing": 1}]


def stat_of(gt_ids, gt_segs, pred_ids, pred_segs, cats=CATS):
  acc = pq.PQAccumulator(cats)
  acc.add(7, np.asarray(gt_ids), gt_segs, np.asarray(pred_ids), pred_segs)
  return acc


def test_hand_made_iou_void_and_strict_threshold():
  gt = np.zeros((10, 10), np.int64)
  gt[:5] = 1          # thing a, 50 px
  gt[5:, :5] = 2      # stuff b, 25 px
  gt[5:, 5:] = 0      # VOID, 25 px
  pred = np.zeros((10, 10), np.int64)
  pred[:6] = 7        # 50 on gt 1, 5 on b, 5 on VOID -> union 60+50-50-5 = 55, IoU 50/55
  pred[6:, :5] = 8    # 20 px inside b -> IoU 20/25 = 0.8
  acc = stat_of(gt, [{"id": 1, "category_id": 1, "iscrowd": 0, "area": 50},
                     {"id": 2, "category_id": 2, "iscrowd": 0, "area": 25}],
                pred, [{"id": 7, "category_id": 1}, {"id": 8, "category_id": 2}])
  r = acc.result()
  assert r["per_class"][1] == {"pq": 50 / 55, "sq": 50 / 55, "rq": 1.0}
  assert r["per_class"][2] == {"pq": 0.8, "sq": 0.8, "rq": 1.0}
  assert r["per_class"][3] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
  assert r["All"]["n"] == 2 and r["All"]["pq"] == (50 / 55 + 0.8) / 2
  # IoU exactly 0.5 is not a match (strict >): pred covers GT 1 (4 px) + 4 px of GT 3 -> 4/8.
  gt = np.zeros((2, 8), np.int64)
  gt[0, :4] = 1
  gt[0, 4:] = 3
  gt[1, :] = 2
  pred = np.zeros((2, 8), np.int64)
  pred[0, :] = 5
  pred[1, :] = 6
  acc = stat_of(gt, [{"id": 1, "category_id": 1, "iscrowd": 0, "area": 4},
                     {"id": 2, "category_id": 2, "iscrowd": 0, "area": 8},
                     {"id": 3, "category_id": 3, "iscrowd": 0, "area": 4}],
                pred, [{"id": 5, "category_id": 1}, {"id": 6, "category_id": 2}])
  assert (acc.stat.tp.tolist(), acc.stat.fp.tolist(), acc.stat.fn.tolist()) == (
      [0, 1, 0], [1, 0, 0], [1, 0, 1])
  assert acc.result()["per_class"][1] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}


def test_hand_made_crowd_and_void_ignore_rules():
  # col:   0  1  2  3  4  5  6  7  8  9 10 11
  # GT:    c  c  c  c  .  .  .  s  s  s  s  s    c = crowd of category 1, . = VOID, s = stuff 2
  # pred:  1  1  1  2  2  2  3  1  3  4  4  4
  gt = np.array([[9, 9, 9, 9, 0, 0, 0, 4, 4, 4, 4, 4]])
  gt_segs = [{"id": 9, "category_id": 1, "iscrowd": 1, "area": 4},
             {"id": 4, "category_id": 2, "iscrowd": 0, "area": 5}]
  pred = np.array([[1, 1, 1, 2, 2, 2, 3, 1, 3, 4, 4, 4]])
  pred_segs = [{"id": 1, "category_id": 1}, {"id": 2, "category_id": 3},
               {"id": 3, "category_id": 1}, {"id": 4, "category_id": 2}]
  # pred 1 (cat 1): 3 of 4 px on the crowd of its category -> 3/4 > 0.5, ignored
  # pred 2 (cat 3): 2 of 3 px VOID (the crowd is of another category) -> 2/3 > 0.5, ignored
  # pred 3 (cat 1): 1 of 2 px VOID -> 1/2 is not > 0.5 -> FP
  # pred 4 (cat 2): IoU 3 / (3 + 5 - 3 - 0) = 0.6 -> TP
  acc = stat_of(gt, gt_segs, pred, pred_segs)
  assert acc.stat.tp.tolist() == [0, 1, 0]
  assert acc.stat.fp.tolist() == [1, 0, 0]
  assert acc.stat.fn.tolist() == [0, 0, 0]  # crowd GT is never a false negative
  assert acc.result()["per_class"][2]["pq"] == pytest.approx(0.6, abs=1e-15)
  assert acc.result()["per_class"][1] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}  # 1 FP only
  assert acc.result()["All"]["n"] == 2


def test_last_listed_crowd_region_wins():
  gt = np.array([[5, 5, 6, 6, 0]])
  gt_segs = [{"id": 5, "category_id": 1, "iscrowd": 1, "area": 2},
             {"id": 6, "category_id": 1, "iscrowd": 1, "area": 2}]
  pred = np.array([[1, 1, 0, 0, 0]])  # entirely on crowd 5, but crowd 6 is the remembered one
  assert stat_of(gt, gt_segs, pred, [{"id": 1, "category_id": 1}]).stat.fp.tolist() == [1, 0, 0]
  assert stat_of(gt, gt_segs[::-1], pred, [{"id": 1, "category_id": 1}]).stat.fp.tolist() == [0, 0, 0]


def test_gt_json_area_is_used_and_odd_gt_segments():
  gt = np.array([[1, 1, 1, 1, 3, 3]])  # id 3 is in the PNG but not in the GT JSON
  pred = np.array([[7, 7, 7, 0, 8, 8]])
  gt_segs = [{"id": 1, "category_id": 1, "iscrowd": 0, "area": 3},  # JSON area (3), not PNG (4)
             {"id": 2, "category_id": 3, "iscrowd": 0, "area": 10},  # not in the PNG: FN
             {"id": 2 ** 24 + 5, "category_id": 3, "iscrowd": 0, "area": 1}]  # beyond 24 bit: FN
  acc = stat_of(gt, gt_segs, pred, [{"id": 7, "category_id": 1}, {"id": 8, "category_id": 1}])
  assert acc.result()["per_class"][1]["sq"] == 1.0  # 3 / (3 + 3 - 3 - 0)
  assert acc.stat.fn.tolist() == [0, 0, 2]
  assert acc.stat.fp.tolist() == [1, 0, 0]  # pred 8 lies on an unlisted GT id: not ignored


def test_empty_group_reports_zero():
  gt = np.array([[1, 1]])
  acc = stat_of(gt, [{"id": 1, "category_id": 1, "iscrowd": 0}], gt, [{"id": 1, "category_id": 1}])
  r = acc.result()
  assert r["Stuff"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
  assert r["Things"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 1}


# ------------------------------------------------------------------------------------------------
# Errors.


def test_image_errors_name_image_and_segment():
  gt = np.array([[1, 1, 2, 2]])
  gt_segs = [{"id": 1, "category_id": 1, "iscrowd": 0}, {"id": 2, "category_id": 2, "iscrowd": 0}]
  pred = np.array([[4, 4, 9, 9]])
  cases = [
      ([{"id": 4, "category_id": 1}], "segment with ID 9 is presented in PNG and not presented in JSON"),
      ([{"id": 4, "category_id": 1}, {"id": 9, "category_id": 2}, {"id": 11, "category_id": 2}],
       "segment IDs [11] are presented in JSON and not presented in PNG"),
      ([{"id": 4, "category_id": 77}, {"id": 9, "category_id": 2}],
       "segment with ID 4 has unknown category_id 77"),
      # ascending PNG order decides which error comes first: id 4 (unlisted) before 9 (unknown)
      ([{"id": 9, "category_id": 77}], "segment with ID 4 is presented in PNG"),
      ([{"id": 4, "category_id": 1}, {"id": 4, "category_id": 1}, {"id": 9, "category_id": 2}],
       "lists segment ID 4 twice"),
      ([{"id": 0, "category_id": 1}, {"id": 4, "category_id": 1}, {"id": 9, "category_id": 2}],
       "segment ID 0, which is VOID"),
  ]
  for pred_segs, message in cases:
    with pytest.raises(KeyError) as e:
      stat_of(gt, gt_segs, pred, pred_segs)
    assert "In the image with ID 7" in str(e.value) and message in str(e.value), str(e.value)
    assert isinstance(e.value, ValueError)  # hotcoco raises ValueError for the same cases
  with pytest.raises(ValueError, match="image with ID 7 the GT map is"):
    stat_of(gt, gt_segs, np.zeros((2, 4), np.int64), [])
  with pytest.raises(ValueError, match=r"\[0, 2\^24\)"):
    stat_of(gt, gt_segs, pred + 2 ** 24, [])
  acc = stat_of(gt, gt_segs, gt, gt_segs)
  with pytest.raises(KeyError, match="image with ID 7 was added twice"):
    acc.add(7, gt, gt_segs, gt, gt_segs)


def write_pair(folder, gt_ann, pred_ann, gt_ids, pred_ids, cats=CATS):
  for side, ann, ids in (("gt", gt_ann, gt_ids), ("pred", pred_ann, pred_ids)):
    os.makedirs(os.path.join(folder, side), exist_ok=True)
    for a, m in zip(ann, ids):
      Image.fromarray(ref.ids_to_rgb(np.asarray(m))).save(os.path.join(folder, side, a["file_name"]))
  paths = {"gt_json": os.path.join(folder, "gt.json"), "pred_json": os.path.join(folder, "pred.json"),
           "gt_folder": os.path.join(folder, "gt"), "pred_folder": os.path.join(folder, "pred")}
  json.dump({"annotations": gt_ann, "categories": cats}, open(paths["gt_json"], "w"))
  json.dump({"annotations": pred_ann}, open(paths["pred_json"], "w"))
  return paths


def test_file_level_errors(tmp_path):
  ids = np.array([[1, 1, 2, 2]])
  g = {"image_id": 3, "file_name": "a.png", "segments_info": [
      {"id": 1, "category_id": 1, "iscrowd": 0, "area": 2},
      {"id": 2, "category_id": 2, "iscrowd": 0, "area": 2}]}
  p = {"image_id": 3, "file_name": "a.png", "segments_info": [
      {"id": 1, "category_id": 1}, {"id": 2, "category_id": 2}]}
  paths = write_pair(str(tmp_path / "ok"), [g], [p], [ids], [ids])
  args = (paths["gt_json"], paths["pred_json"], paths["gt_folder"], paths["pred_folder"])
  assert pq.pq_compute(*args, workers=1, verbose=False)["All"]["pq"] == 1.0
  json.dump({"annotations": [p, p]}, open(paths["pred_json"], "w"))
  with pytest.raises(KeyError, match="lists the image with ID 3 twice"):
    pq.pq_compute(*args, verbose=False)
  json.dump({"annotations": [dict(p, image_id=4)]}, open(paths["pred_json"], "w"))
  with pytest.raises(KeyError, match="no prediction for the image with id: 3"):
    pq.pq_compute(*args, verbose=False)
  assert pq.pq_compute(*args, skip_missing=True, verbose=False)["All"]["n"] == 0
  json.dump({"annotations": [dict(p, segments_info=p["segments_info"][:1])]},
            open(paths["pred_json"], "w"))
  with pytest.raises(KeyError, match="image with ID 3 segment with ID 2 is presented in PNG"):
    pq.pq_compute(*args, workers=2, verbose=False)  # raised inside a worker, re-raised here
  with pytest.raises(FileNotFoundError, match="with predicted segmentations doesn't exist"):
    pq.pq_compute(paths["gt_json"], paths["pred_json"], paths["gt_folder"], str(tmp_path / "no"))


def test_command_line_writes_table_and_json(random_sets, tmp_path, capsys):
  paths = random_sets[0]
  out = tmp_path / "sub" / "pq.json"
  results = pq.main(["--gt-json", paths["gt_json"], "--gt-folder", paths["gt_folder"],
                     "--pred-json", paths["pred_json"], "--pred-folder", paths["pred_folder"],
                     "--output", str(out), "--workers", "1"])
  printed = capsys.readouterr().out
  assert "All       |" in printed and f"{100 * results['All']['pq']:5.3f}" in printed
  saved = json.load(open(out))
  assert saved["All"] == results["All"] and saved["Stuff"]["n"] == results["Stuff"]["n"]
  entry = saved["per_class"]["1"]
  assert entry["pq"] == results["per_class"][1]["pq"] and entry["name"] == "thing1"
  assert {"tp", "fp", "fn", "iou"} <= set(entry)


def test_benchmark_script_smoke(tmp_path):
  script = os.path.join(os.path.dirname(__file__), "..", "scripts", "bench_pq.py")
  out = tmp_path / "bench.json"
  subprocess.run([sys.executable, script, "--images", "6", "--height", "32", "--width", "48",
                  "--repeats", "1", "--data-dir", str(tmp_path / "data"), "--output", str(out)],
                 check=True, capture_output=True, timeout=120)
  report = json.load(open(out))
  assert all(r["max_abs_difference_to_ours"] <= 1e-12 for r in report["runs"].values())
  assert "reference loop" in report["runs"] and len(report["runs"]) >= 3


def test_png_reader_matches_pillow(tmp_path):
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 2 ** 24, (5, 7))
  path = str(tmp_path / "x.png")
  Image.fromarray(ref.ids_to_rgb(ids)).save(path)
  assert (pq.read_panoptic_png(path) == ids).all()
  assert (pq.read_png_pil(path) == ids).all()
  rgba = np.concatenate([ref.ids_to_rgb(ids), np.full((5, 7, 1), 200, np.uint8)], axis=-1)
  Image.fromarray(rgba).save(path)  # alpha is dropped, as panopticapi does
  assert (pq.read_panoptic_png(path) == ids).all()
  assert (pq.id_to_rgb(ids) == ref.ids_to_rgb(ids)).all()
  assert (pq.rgb_to_id(ref.ids_to_rgb(ids)) == ids).all()


DECODER_SETS = [("libdeflate", "pyspng"), ("pyspng",), ("libdeflate", "cv2"), ("cv2",), (),
                ("native", "libdeflate", "pyspng"), ("native",)]


def test_png_decoders_agree(tmp_path):
  """Every decoder path (libdeflate re-wrap, pyspng, OpenCV, Pillow) gives Pillow's ids."""
  rng = np.random.default_rng(1)
  blocks = np.kron(rng.integers(0, 2 ** 24, (6, 8)), np.ones((9, 9), np.int64))[:50, :70]
  noise = rng.integers(0, 2 ** 24, (33, 41))
  large = np.kron(blocks, np.ones((4, 4), np.int64))  # uncompressed: several IDAT chunks
  files = []
  for k, ids in enumerate((blocks, noise, blocks[:1, :1], blocks[:1], blocks[:, :1], large)):
    rgb = ref.ids_to_rgb(ids)
    for name, image, kwargs in (
        ("rgb", Image.fromarray(rgb), {}),
        ("rgb_fast", Image.fromarray(rgb), {"compress_level": 1}),
        ("rgb_big_idat", Image.fromarray(rgb), {"compress_level": 0}),
        ("rgba", Image.fromarray(np.dstack([rgb, rng.integers(0, 256, ids.shape, np.uint8)])), {}),
        ("interlaced", Image.fromarray(rgb), {"interlace": 1}) if k == 0 else (None, None, None),
        ("palette", Image.fromarray(rgb).quantize(7), {}) if k == 0 else (None, None, None),
        ("grey", Image.fromarray(rgb[..., 1]), {}) if k == 0 else (None, None, None)):
      if name is not None:
        files.append(str(tmp_path / f"{k}_{name}.png"))
        image.save(files[-1], **kwargs)
  assert open(files[-2], "rb").read().count(b"IDAT") > 1  # large, compress_level 0
  readers = [pq.PngIdReader(use) for use in DECODER_SETS]
  assert readers[0].decoders[:2] == ("pyspng", "libdeflate") or "libdeflate" not in readers[0].decoders
  assert [r.decoders for r in readers[3:5]] == [("cv2", "pillow"), ("pillow",)]
  for path in files:
    expected = pq.read_png_pil(path)
    for reader in readers:
      for slot in (0, 1, 0):
        got = reader(path, slot=slot)
        assert got.dtype == np.uint32 and (got == expected).all(), (path, reader.decoders)


def test_png_decoders_report_bad_files(tmp_path):
  good = str(tmp_path / "good.png")
  Image.fromarray(ref.ids_to_rgb(np.arange(64 * 48).reshape(48, 64))).save(good)
  data = open(good, "rb").read()
  bad = str(tmp_path / "bad.png")
  for broken in (data[:len(data) // 2], data[:60] + bytes(len(data) - 60), b"not a png"):
    open(bad, "wb").write(broken)
    for use in DECODER_SETS:
      with pytest.raises(ValueError, match="cannot decode PNG .*bad.png"):
        pq.PngIdReader(use)(bad)


def test_pyspng_import_failure_falls_back(random_sets, monkeypatch):
  """Without the C extension, pyspng (or libdeflate, or OpenCV too): the same numbers, bit for
  bit."""
  paths = random_sets[1]
  args = (paths["gt_json"], paths["pred_json"], paths["gt_folder"], paths["pred_folder"])
  fast = pq.pq_compute(*args, workers=1, verbose=False)
  monkeypatch.setattr(pq_io, "_import_unfilter", lambda: None)  # the C extension not built
  monkeypatch.setattr(pq_io, "_READER", None)
  assert "native" not in pq_io.process_reader().decoders
  assert pq.pq_compute(*args, workers=1, verbose=False) == fast
  monkeypatch.setattr(pq_io._Libdeflate, "load", classmethod(lambda cls: None))
  for missing, decoders in ((["pyspng"], ("cv2", "pillow")), ([], ("pyspng", "pillow")),
                            (["pyspng", "cv2"], ("pillow",))):
    with monkeypatch.context() as m:
      for module in missing:
        m.setitem(sys.modules, module, None)  # import raises ImportError
      m.setattr(pq_io, "_READER", None)
      assert pq_io.process_reader().decoders == decoders
      assert pq.pq_compute(*args, workers=1, verbose=False) == fast


def png_filter(pixels, types):
  """[H, W, C] uint8 -> the PNG scanlines (filter byte + filtered bytes), row y with filter
  types[y] (0 None, 1 Sub, 2 Up, 3 Average, 4 Paeth), by the PNG spec's formulas."""
  h, w, c = pixels.shape
  x = pixels.reshape(h, w * c).astype(np.int64)
  rows = []
  for y in range(h):
    cur, up = x[y], x[y - 1] if y else np.zeros_like(x[0])
    left = np.concatenate([np.zeros(c, np.int64), cur[:-c]])
    up_left = np.concatenate([np.zeros(c, np.int64), up[:-c]])
    p = left + up - up_left
    pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, up_left))
    pred = (0 * cur, left, up, (left + up) // 2, paeth)[types[y]]
    rows.append(bytes([types[y]]) + ((cur - pred) % 256).astype(np.uint8).tobytes())
  return b"".join(rows)


def png_bytes(pixels, types, idat_parts=3, level=6):
  """A PNG of [H, W, 3|4] uint8 pixels with the given per-row filter types (several IDATs)."""
  import struct
  import zlib

  def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
  h, w, c = pixels.shape
  z = zlib.compress(png_filter(pixels, types), level)
  cut = np.linspace(0, len(z), idat_parts + 1).astype(int)
  header = struct.pack(">IIBBBBB", w, h, 8, 2 if c == 3 else 6, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
          + b"".join(chunk(b"IDAT", z[a:b]) for a, b in zip(cut[:-1], cut[1:]))
          + chunk(b"IEND", b""))


def unfilter_images():
  """Images for the un-filter: blocks (Paeth's per-pixel shortcuts), noise, small values (ties
  of Paeth's distances), values around 0 / 255 (wrapping sums), odd widths."""
  rng = np.random.default_rng(7)
  blocks = np.kron(rng.integers(0, 256, (5, 6, 4)), np.ones((7, 9, 1), np.int64))[:33, :50]
  return [blocks.astype(np.uint8), rng.integers(0, 256, (21, 17, 4), np.uint8),
          rng.integers(0, 4, (40, 31, 4), np.uint8),
          rng.choice([0, 1, 254, 255], (19, 23, 4)).astype(np.uint8),
          rng.integers(0, 256, (1, 1, 4), np.uint8), rng.integers(0, 3, (6, 1, 4), np.uint8)]


@pytest.mark.parametrize("use", [("native", "libdeflate"), ("native",)])
def test_native_unfilter_every_filter_type(tmp_path, use):
  """The C un-filter (libdeflate or zlib inflating) gives Pillow's ids for PNGs of every filter
  type (forced per row), RGB and RGBA, and for Pillow's own PNGs at several settings."""
  pytest.importorskip("rap_jax.metrics._png_unfilter")
  reader = pq.PngIdReader(use)
  assert reader.decoders[0] == "native"
  if "libdeflate" not in use:
    assert "libdeflate" not in reader.decoders  # Python's zlib inflates
  rng = np.random.default_rng(8)
  datas = []
  for rgba in unfilter_images():
    h = rgba.shape[0]
    for pixels in (rgba[..., :3], rgba):
      for types in ([t] * h for t in range(5)):  # one type for all rows
        datas.append(png_bytes(np.ascontiguousarray(pixels), types))
      datas.append(png_bytes(np.ascontiguousarray(pixels), rng.integers(0, 5, h).tolist(), 1, 1))
      for kwargs in ({}, {"optimize": True}, {"compress_level": 0}, {"compress_level": 1},
                     {"compress_level": 9}):
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(pixels)).save(buf, "PNG", **kwargs)
        datas.append(buf.getvalue())
  for k, data in enumerate(datas):
    expected = pq.rgb_to_id(pq_io._pil_rgb(data))
    got = reader._native(pq_io._png_layout(data), slot=k % 2)  # not the fallback
    assert got is not None and got.dtype == np.uint32 and (got == expected).all(), k
    path = tmp_path / f"{k}.png"
    path.write_bytes(data)
    assert (reader(str(path)) == expected).all()
    assert (pq.read_panoptic_png(str(path)) == expected).all()


def test_native_unfilter_rejects_bad_data(tmp_path):
  """Unknown filter types and corrupt data go to the other decoders, which name the file."""
  native = pytest.importorskip("rap_jax.metrics._png_unfilter")
  pixels = unfilter_images()[0][..., :3].copy()
  data = bytearray(png_bytes(pixels, [1] * pixels.shape[0], 1, 0))  # stored: bytes as they are
  h, w, _ = pixels.shape
  layout = pq_io._png_layout(bytes(data))
  raw = __import__("zlib").decompress(layout[4])
  out = np.empty((h, w), np.uint32)
  native.unfilter_ids(raw, out, h, w, 3)
  assert (out == pq.rgb_to_id(pixels)).all()
  for args, message in (((raw[:-1], out, h, w, 3), "too short"),
                        ((raw, out[:-1], h, w, 3), "out must"),
                        ((raw, out, h, w, 2), "channel")):
    with pytest.raises(ValueError, match=message):
      native.unfilter_ids(*args)
  with pytest.raises(TypeError):  # not contiguous
    native.unfilter_ids(raw, out[:, ::2], h, w // 2, 3)
  bad_raw = bytearray(raw)
  bad_raw[5 * (1 + 3 * w)] = 5  # row 5: filter type 5
  with pytest.raises(ValueError, match="filter type 5 in row 5"):
    native.unfilter_ids(bytes(bad_raw), out, h, w, 3)
  idat = data.index(b"IDAT") + 4  # zlib header (2 bytes), then a stored block's header (5 bytes)
  data[idat + 7 + 5 * (1 + 3 * w)] = 5
  bad = tmp_path / "bad_filter.png"
  bad.write_bytes(bytes(data))
  assert pq.PngIdReader()._native(pq_io._png_layout(bytes(data)), 0) is None
  for use in (("native", "libdeflate", "pyspng"), ("native", "cv2"), ("native",)):
    with pytest.raises(ValueError, match="cannot decode PNG .*bad_filter.png"):
      pq.PngIdReader(use)(str(bad))


def test_runs_of_odd_shapes_and_layouts():
  rng = np.random.default_rng(5)
  gt = rng.integers(1, 4, (9, 11))
  pred = rng.integers(5, 8, (9, 11))
  gt_segs = [{"id": i, "category_id": 1 + i % 3, "iscrowd": 0} for i in (1, 2, 3)]
  pred_segs = [{"id": i, "category_id": 1 + (i - 4) % 3} for i in (5, 6, 7)]
  expected = stat_of(gt, gt_segs, pred, pred_segs).stat
  for g, p in ((gt.T.copy().T, pred.T.copy().T), (gt.astype(np.uint8), pred.astype(np.uint16)),
               (np.asfortranarray(gt), pred[:, ::-1][:, ::-1])):
    got = stat_of(g, gt_segs, p, pred_segs).stat
    assert all((getattr(got, k) == getattr(expected, k)).all() for k in ("tp", "fp", "fn", "iou"))
  one = stat_of(np.array([[2]]), gt_segs[1:2], np.array([[6]]), pred_segs[1:2]).stat
  assert one.tp.tolist() == [0, 0, 1] and one.iou.tolist() == [0.0, 0.0, 1.0]
  empty = stat_of(np.zeros((0, 4), int), [], np.zeros((0, 4), int), []).stat
  assert empty.tp.sum() == empty.fp.sum() == empty.fn.sum() == 0
