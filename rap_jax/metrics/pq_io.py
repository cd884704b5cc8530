"""Panoptic PNG reading, and PQ's report and command line (SPEC §4.2, §8).

A panoptic PNG holds ids as RGB, ``id = R + 256 G + 65536 B`` (alpha is dropped, as panopticapi
does). `PngIdReader` decodes non-interlaced 8-bit RGB / RGBA PNGs, fastest first, with

* "native": the optional C extension `rap_jax.metrics._png_unfilter` (built by ``pip install``
  from ``_png_unfilter.c``; absent when there was no compiler). The chunks are parsed here, the
  image data inflated by the system's libdeflate (``libdeflate.so.0``, through ctypes) or else
  Python's zlib, and the C code un-filters the scanlines straight into uint32 ids, one pass.
  For a 480x640 PNG of the PQ benchmark ~0.23 ms CPU in all (libdeflate), against ~1.7 ms for
  the next path. Data it does not accept (corrupt, unknown filter type) go to the next path,
  which reports the error;
* pyspng (libspng; a dependency), or OpenCV when pyspng cannot be imported; before that, when
  libdeflate is there, the image data are inflated by libdeflate and re-wrapped as a PNG of
  uncompressed ("stored") deflate blocks, so that the decoder only un-filters (zlib's inflate is
  most of a decode: 1.75 ms CPU of pyspng's ~1.7 ms, against libdeflate's 0.06 ms).

Other PNGs (palette, grey, 16 bit, interlaced), and everything when none of the above is there,
go through Pillow's RGB conversion. Every path gives the same ids (tests/test_pq.py).
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import importlib
import json
import os
import struct
import time
import zlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
  from rap_jax.metrics.pq import PQStat

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_ID_MASK = 0xFFFFFF
_MAX_STORED = 1 << 30  # larger images: no re-wrap (its buffers stay allocated per reader)


class _Libdeflate:
  """The few functions of libdeflate's stable C API (1.x) used here, through ctypes."""

  def __init__(self, lib: ctypes.CDLL):
    size_t, ptr = ctypes.c_size_t, ctypes.c_void_p
    lib.libdeflate_alloc_decompressor.restype = ptr
    lib.libdeflate_alloc_decompressor.argtypes = []
    lib.libdeflate_alloc_compressor.restype = ptr
    lib.libdeflate_alloc_compressor.argtypes = [ctypes.c_int]
    lib.libdeflate_zlib_decompress.restype = ctypes.c_int
    lib.libdeflate_zlib_decompress.argtypes = [ptr, ctypes.c_char_p, size_t, ptr, size_t, ptr]
    lib.libdeflate_zlib_compress.restype = size_t
    lib.libdeflate_zlib_compress.argtypes = [ptr, ptr, size_t, ptr, size_t]
    lib.libdeflate_zlib_compress_bound.restype = size_t
    lib.libdeflate_zlib_compress_bound.argtypes = [ptr, size_t]
    lib.libdeflate_crc32.restype = ctypes.c_uint32
    lib.libdeflate_crc32.argtypes = [ctypes.c_uint32, ptr, size_t]
    lib.libdeflate_free_decompressor.argtypes = [ptr]
    lib.libdeflate_free_compressor.argtypes = [ptr]
    self._lib = lib
    self._inflater = lib.libdeflate_alloc_decompressor()
    self._storer = lib.libdeflate_alloc_compressor(0)  # level 0: stored blocks
    if not self._inflater or not self._storer:
      self.__del__()
      raise OSError("libdeflate without a level-0 compressor")

  def __del__(self):
    lib = getattr(self, "_lib", None)
    if lib is not None:
      lib.libdeflate_free_decompressor(getattr(self, "_inflater", None))
      lib.libdeflate_free_compressor(getattr(self, "_storer", None))
      self._lib = None

  @classmethod
  def load(cls) -> "_Libdeflate | None":
    """The system's libdeflate, or None."""
    for name in ("libdeflate.so.0", ctypes.util.find_library("deflate")):
      if not name:
        continue
      try:
        return cls(ctypes.CDLL(name))
      except (OSError, AttributeError):
        continue
    return None

  def inflate(self, data: bytes, out: np.ndarray) -> bool:
    """zlib stream -> exactly out.nbytes bytes into `out` (uint8, contiguous); False if not so."""
    return self._lib.libdeflate_zlib_decompress(self._inflater, data, len(data), out.ctypes.data,
                                                out.nbytes, None) == 0

  def store_bound(self, n: int) -> int:
    return self._lib.libdeflate_zlib_compress_bound(self._storer, n)

  def store(self, raw: np.ndarray, out: np.ndarray, offset: int) -> int:
    """`raw` as a zlib stream of stored blocks at out[offset:]; returns its length."""
    return self._lib.libdeflate_zlib_compress(self._storer, raw.ctypes.data, raw.nbytes,
                                              out.ctypes.data + offset, out.nbytes - offset)

  def crc32(self, buf: np.ndarray, start: int, stop: int) -> int:
    return self._lib.libdeflate_crc32(0, buf.ctypes.data + start, stop - start)


def _png_layout(data: bytes) -> tuple[int, int, int, bytes, bytes] | None:
  """(height, width, channels, signature + IHDR chunk, image data) of a non-interlaced 8-bit RGB /
  RGBA PNG, else None."""
  if len(data) < 33 or data[:8] != _SIGNATURE or data[8:16] != b"\0\0\0\x0dIHDR":
    return None
  width, height, depth, color, method, filtering, interlace = struct.unpack_from(">IIBBBBB", data, 16)
  if depth != 8 or color not in (2, 6) or method or filtering or interlace:
    return None
  pos, parts = 33, []
  while pos + 8 <= len(data):
    (n,) = struct.unpack_from(">I", data, pos)
    kind = data[pos + 4:pos + 8]
    if kind == b"IDAT":
      parts.append(data[pos + 8:pos + 8 + n])
    elif kind == b"IEND":
      break
    pos += 12 + n
  if not parts:
    return None
  return (height, width, 3 if color == 2 else 4, data[:33],
          parts[0] if len(parts) == 1 else b"".join(parts))


def _import_unfilter() -> Any:
  """The C extension `rap_jax.metrics._png_unfilter`, or None when it was not built."""
  try:
    return importlib.import_module("rap_jax.metrics._png_unfilter")
  except ImportError:
    return None


def _import_decoders(use: Sequence[str]) -> dict[str, Any]:
  """{name: module} of those in `use`: the C un-filter ("native"), the decoder (pyspng, else
  OpenCV) and libdeflate."""
  found: dict[str, Any] = {}
  if "native" in use:
    native = _import_unfilter()
    if native is not None:
      found["native"] = native
  for name in ("pyspng", "cv2"):
    if name in use:
      try:
        found[name] = importlib.import_module(name)
        break
      except ImportError:
        continue
  if "libdeflate" in use and found:
    deflate = _Libdeflate.load()
    if deflate is not None:
      found["libdeflate"] = deflate
  return found


class PngIdReader:
  """Panoptic PNG -> [H, W] uint32 ids (see the module docstring for the decoders).

  use: the decoders allowed, of "native", "libdeflate", "pyspng", "cv2" (Pillow is always there).
  A result is a view of a buffer that the next call with the same `slot` overwrites.
  """

  def __init__(self, use: Sequence[str] = ("native", "libdeflate", "pyspng", "cv2")):
    self._dec = _import_decoders(use)
    self.decoders = tuple(self._dec) + ("pillow",)
    self._raw = np.empty(0, np.uint8)  # inflated scanlines
    self._png = np.empty(0, np.uint8)  # the re-wrapped PNG
    self._out: dict[int, np.ndarray] = {}  # per slot: [H, W] uint32 ids

  def __call__(self, path: str, slot: int = 0) -> np.ndarray:
    with open(path, "rb") as f:
      data = f.read()
    try:
      return self.decode(data, slot)
    except Exception as e:
      raise ValueError(f"cannot decode PNG {path}: {e}") from e

  def decode(self, data: bytes, slot: int = 0) -> np.ndarray:
    """PNG file bytes -> [H, W] uint32 ids."""
    layout = _png_layout(data)
    if layout is not None and "native" in self._dec:
      ids = self._native(layout, slot)
      if ids is not None:
        return ids
    if layout is None or not ("pyspng" in self._dec or "cv2" in self._dec):
      return rgb_to_id(_pil_rgb(data))
    spng = self._dec.get("pyspng")
    # pyspng 0.1.4 ignores chunk CRCs (SPNG_CRC_USE): the re-wrapped PNG gets one for OpenCV only.
    png = self._stored(layout, crc=spng is None) if "libdeflate" in self._dec else None
    if spng is not None:
      try:
        rgb = spng.load(data if png is None else png.tobytes())
      except RuntimeError:
        if png is None:
          raise
        rgb = spng.load(data)  # the file as it is: its own error, if any
      return self._ids(rgb, slot, bgr=False)
    cv2 = self._dec["cv2"]
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8) if png is None else png, cv2.IMREAD_UNCHANGED)
    if bgr is None:
      raise ValueError("OpenCV could not decode it")
    return self._ids(bgr, slot, bgr=True)

  def _native(self, layout: tuple[int, int, int, bytes, bytes], slot: int) -> np.ndarray | None:
    """Ids by inflating (libdeflate, else Python's zlib) and the C un-filter, or None when the
    data are not as expected (the other decoders then report what is wrong)."""
    height, width, channels, _, zdata = layout
    size = height * (1 + width * channels)
    if not height or not width or size > _MAX_STORED:  # empty images: the decoders' errors
      return None
    deflate = self._dec.get("libdeflate")
    if deflate is not None:
      if self._raw.size < size:
        self._raw = np.empty(size, np.uint8)
      raw: Any = self._raw
      if not deflate.inflate(zdata, raw[:size]):
        return None
    else:
      try:
        raw = zlib.decompress(zdata, bufsize=max(size, 1))
      except zlib.error:
        return None
      if len(raw) != size:
        return None
    out = self._slot(slot, height, width)
    try:
      self._dec["native"].unfilter_ids(raw, out, height, width, channels)
    except ValueError:  # an unknown filter type
      return None
    return out

  def _slot(self, slot: int, height: int, width: int) -> np.ndarray:
    """The [height, width] uint32 buffer of `slot`."""
    out = self._out.get(slot)
    if out is None or out.shape != (height, width):
      out = self._out[slot] = np.empty((height, width), np.uint32)
    return out

  def _stored(self, layout: tuple[int, int, int, bytes, bytes], crc: bool) -> np.ndarray | None:
    """The PNG with its image data inflated by libdeflate and stored uncompressed, or None.

    crc: compute the IDAT chunk's CRC (else 0).
    """
    height, width, channels, header, zdata = layout
    deflate = self._dec["libdeflate"]
    size = height * (1 + width * channels)
    if size > _MAX_STORED:
      return None
    if self._raw.size < size:
      self._raw = np.empty(size, np.uint8)
    raw = self._raw[:size]
    if not deflate.inflate(zdata, raw):
      return None  # let the decoder report what is wrong
    bound = 33 + 8 + deflate.store_bound(size) + 4 + len(_IEND)
    if self._png.size < bound:
      self._png = np.empty(bound, np.uint8)
    png = self._png
    png[:33] = np.frombuffer(header, np.uint8)  # signature + IHDR chunk
    n = deflate.store(raw, png, 41)
    if not n:  # pragma: no cover - the bound is libdeflate's own
      return None
    png[33:41] = np.frombuffer(struct.pack(">I4s", n, b"IDAT"), np.uint8)
    png[41 + n:45 + n] = np.frombuffer(
        struct.pack(">I", deflate.crc32(png, 37, 41 + n) if crc else 0), np.uint8)
    png[45 + n:57 + n] = np.frombuffer(_IEND, np.uint8)
    return png[:57 + n]

  def _ids(self, pixels: np.ndarray, slot: int, bgr: bool) -> np.ndarray:
    """[H, W, 3|4] uint8 RGB(A) (BGR(A) when `bgr`) -> [H, W] uint32 ids in a slot buffer.

    Numpy only (OpenCV's thread pool must not be touched in forked workers): each pixel's bytes
    are read as one little-endian uint32 (RGB: a view with a 3-byte stride) and masked to 24 bit.
    """
    h, w, c = pixels.shape
    out = self._slot(slot, h, w)
    if bgr:
      pixels, c = pixels[..., 2::-1], 3
    flat = np.ascontiguousarray(pixels).reshape(-1)
    n = h * w
    if n == 0:
      return out
    if c == 4:
      words = flat.view("<u4")
    else:  # pixel i: bytes 3i .. 3i+3 = R, G, B and the next R; the last pixel stays inside
      words = np.ndarray((n - 1,), "<u4", flat, 0, (3,))
      r, g, b = (int(v) for v in flat[-3:])
      out.reshape(-1)[-1] = r | g << 8 | b << 16
    np.bitwise_and(words, _ID_MASK, out=out.reshape(-1)[:len(words)])
    return out


def _pil_rgb(data: bytes) -> np.ndarray:
  import io

  from PIL import Image
  with Image.open(io.BytesIO(data)) as im:
    return np.asarray(im.convert("RGB"))


def read_png_pil(path: str) -> np.ndarray:
  """Panoptic PNG -> [H, W] uint32 ids with Pillow (RGB after conversion; alpha dropped)."""
  with open(path, "rb") as f:
    return rgb_to_id(_pil_rgb(f.read()))


_READER: PngIdReader | None = None


def process_reader() -> PngIdReader:
  """This process's `PngIdReader` (created on first use)."""
  global _READER
  if _READER is None:
    _READER = PngIdReader()
  return _READER


def read_panoptic_png(path: str) -> np.ndarray:
  """Panoptic PNG -> [H, W] uint32 ids ``R + 256 G + 65536 B`` (a fresh array)."""
  return np.array(process_reader()(path, slot=-1))


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
  """[H, W, 3] uint8 RGB -> [H, W] uint32 ids ``R + 256 G + 65536 B`` (SPEC §4.2)."""
  rgb = rgb.astype(np.uint32)
  return rgb[..., 0] | (rgb[..., 1] << 8) | (rgb[..., 2] << 16)


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
  """[H, W] ids in [0, 2^24) -> [H, W, 3] uint8 RGB (SPEC §4.2)."""
  ids = np.asarray(ids, np.uint32)
  return np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], axis=-1).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# Reporting and the command line.


def format_table(results: dict[str, Any]) -> str:
  """The PQ / SQ / RQ / N table (x100, 3 decimals as RAP's ps_eval prints it; SPEC §8)."""
  lines = ["{:10s}| {:>5s}  {:>5s}  {:>5s} {:>5s}".format("", "PQ", "SQ", "RQ", "N"),
           "-" * (10 + 7 * 4)]
  for name in ("All", "Things", "Stuff"):
    r = results[name]
    lines.append("{:10s}| {:5.3f}  {:5.3f}  {:5.3f} {:5d}".format(
        name, 100 * r["pq"], 100 * r["sq"], 100 * r["rq"], r["n"]))
  return "\n".join(lines)


def results_json(results: dict[str, Any], stat: "PQStat | None" = None,
                 categories: Sequence[dict] | None = None) -> dict[str, Any]:
  """JSON-ready numbers: groups, and per class pq/sq/rq (+ tp/fp/fn/iou and name if given)."""
  out: dict[str, Any] = {name: dict(results[name]) for name in ("All", "Things", "Stuff")}
  names = {c["id"]: c.get("name") for c in categories or ()}
  per_class = {}
  for k, cid in enumerate(results["per_class"]):
    entry: dict[str, Any] = dict(results["per_class"][cid])
    if names.get(cid) is not None:
      entry["name"] = names[cid]
    if stat is not None:
      entry.update(tp=int(stat.tp[k]), fp=int(stat.fp[k]), fn=int(stat.fn[k]),
                   iou=float(stat.iou[k]))
    per_class[str(cid)] = entry
  out["per_class"] = per_class
  return out


def main(argv: Sequence[str] | None = None, stat_files: Callable | None = None) -> dict[str, Any]:
  """``python -m rap_jax.metrics.pq``: prints the table, optionally writes the numbers as JSON.

  stat_files: `rap_jax.metrics.pq.pq_stat_files` (imported here when not given).
  """
  if stat_files is None:
    from rap_jax.metrics.pq import pq_stat_files as stat_files
  parser = argparse.ArgumentParser(description="Panoptic quality (PQ, SQ, RQ), as panopticapi.")
  parser.add_argument("--gt-json", required=True, help="panoptic GT JSON (panopticapi format)")
  parser.add_argument("--pred-json", required=True, help="prediction JSON")
  parser.add_argument("--gt-folder", default=None, help="GT PNG folder (default: JSON path w/o .json)")
  parser.add_argument("--pred-folder", default=None, help="prediction PNG folder")
  parser.add_argument("--output", default=None, help="write the numbers as JSON here")
  parser.add_argument("--workers", type=int, default=None, help="processes (default: all CPUs)")
  parser.add_argument("--skip-missing", action="store_true",
                      help="skip GT images without prediction (RAP ps_eval) instead of failing")
  args = parser.parse_args(argv)
  start = time.time()
  stat, table = stat_files(args.gt_json, args.pred_json, args.gt_folder, args.pred_folder,
                           workers=args.workers, skip_missing=args.skip_missing)
  results = stat.results(table)
  print(format_table(results))
  print(f"Time elapsed: {time.time() - start:0.2f} seconds")
  if args.output:
    with open(args.gt_json) as f:
      categories = json.load(f)["categories"]
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
      json.dump(results_json(results, stat, categories), f, indent=1)
  return results


if __name__ == "__main__":
  main()
