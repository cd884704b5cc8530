/*
 * rap_jax.metrics._png_unfilter: PNG scanlines -> panoptic ids, for PQ (pq_io.PngIdReader).
 *
 * A PNG's inflated image data is one filter-type byte per row followed by the row's filtered
 * bytes (PNG spec, section 9). For 8-bit RGB (3 bytes a pixel) and RGBA (4 bytes), this module
 * undoes the five filters and writes each pixel as one unsigned 32-bit number
 *
 *     id = R + 256 G + 65536 B     (alpha dropped, as panopticapi does),
 *
 * so that un-filtering and the id conversion are one pass. The trick: the four bytes of a pixel,
 * packed as R | G << 8 | B << 16 | A << 24, are the byte lanes of one uint32, and the per-byte
 * additions and averages of the filters can be done on all lanes at once without carries
 * between them ("SIMD within a register"). The previous row of the output is then exactly the
 * "prior scanline" the filters refer to. Paeth needs per-byte comparisons; its two common
 * cases (up == up-left: the predictor is "left"; left == up-left: it is "up") are decided per
 * pixel, and the rest goes byte by byte.
 *
 * Only the Python C API is used (no zlib: the caller inflates). Inflating and parsing chunks
 * happen in Python; anything unusual is reported as ValueError and the caller falls back to its
 * other decoders.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Low 7 bits and the top bit of every byte lane. */
#define LOW7 0x7f7f7f7fu
#define HIGH1 0x80808080u

/* Lane-wise (x + y) mod 256 in each of the four bytes. */
static inline uint32_t lanes_add(uint32_t x, uint32_t y) {
  return ((x & LOW7) + (y & LOW7)) ^ ((x ^ y) & HIGH1);
}

/* Lane-wise floor((x + y) / 2): the common bits, plus half of the differing ones. */
static inline uint32_t lanes_avg(uint32_t x, uint32_t y) {
  return (x & y) + (((x ^ y) & 0xfefefefeu) >> 1);
}

/* Paeth's predictor (PNG spec 9.4), byte by byte: left a, up b, up-left c. */
static uint32_t paeth_lanes(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t result = 0;
  for (int shift = 0; shift < 32; shift += 8) {
    int ia = (int)((a >> shift) & 255u), ib = (int)((b >> shift) & 255u);
    int ic = (int)((c >> shift) & 255u);
    int pa = abs(ib - ic);           /* |p - a| with p = a + b - c */
    int pb = abs(ia - ic);           /* |p - b| */
    int pc = abs(ia + ib - 2 * ic);  /* |p - c| */
    int pick = (pa <= pb && pa <= pc) ? ia : (pb <= pc ? ib : ic);
    result |= (uint32_t)pick << shift;
  }
  return result;
}

/* The filtered bytes of one pixel as lanes (explicit shifts: the same on any byte order). */
static inline uint32_t load3(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16;
}

/* Where the machine is little-endian, one unaligned 4-byte load of which the top byte is
 * masked off; it reads one byte past the pixel, so not for the last pixel of the data. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
static inline uint32_t load3_wide(const uint8_t *p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v & 0xffffffu;
}
#else
#define load3_wide load3
#endif

static inline uint32_t load4(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Pixel i of a row: a wide load while i < wide (the caller keeps the last pixel of the data
 * out of that range), else byte by byte. */
static inline uint32_t pixel3(const uint8_t *src, Py_ssize_t i, Py_ssize_t wide) {
  return i < wide ? load3_wide(src + 3 * i) : load3(src + 3 * i);
}

static inline uint32_t pixel4(const uint8_t *src, Py_ssize_t i, Py_ssize_t wide) {
  (void)wide;
  return load4(src + 4 * i);
}

/*
 * Un-filters one row of `width` pixels of `BPP` bytes from `src` (after the filter-type byte)
 * into `cur`, given the previous output row `up` (zeros for the first row); `wide` as for
 * pixel3. Returns 0, or -1 for an unknown filter type. Written once per pixel size so that the
 * loads are constant.
 *
 * Panoptic maps are large constant regions, so most filtered bytes are zero: a row equal to the
 * one above is an "Up" row of zeros. Up rows therefore start as a copy of the row above and only
 * pixels within non-zero 8-byte words of the filtered data are added; in the sequential filters
 * a zero pixel skips the addition (which breaks the chain of dependent additions).
 */
#define DEFINE_UNFILTER_ROW(NAME, BPP, PIXEL)                                                  \
  static int NAME(int type, const uint8_t *src, const uint32_t *up, uint32_t *cur,          \
                  Py_ssize_t width, Py_ssize_t wide) {                                      \
    Py_ssize_t i;                                                                           \
    uint32_t a = 0, c = 0; /* left and up-left: zero before the first pixel */              \
    switch (type) {                                                                         \
      case 0: /* None */                                                                    \
        for (i = 0; i < width; i++) cur[i] = PIXEL(src, i, wide);                            \
        return 0;                                                                           \
      case 1: /* Sub: + left */                                                             \
        for (i = 0; i < width; i++) {                                                       \
          uint32_t x = PIXEL(src, i, wide);                                                 \
          if (x) a = lanes_add(x, a);                                                       \
          cur[i] = a;                                                                       \
        }                                                                                   \
        return 0;                                                                           \
      case 2: { /* Up: + up */                                                              \
        const Py_ssize_t n = BPP * width;                                                   \
        Py_ssize_t k;                                                                       \
        memcpy(cur, up, (size_t)width * sizeof(uint32_t));                                  \
        for (k = 0; k < n; k += 8) {                                                        \
          const Py_ssize_t stop = n - k < 8 ? n : k + 8; /* bytes [k, stop) */              \
          uint64_t word = 0;                                                                \
          if (stop - k == 8) {                                                              \
            memcpy(&word, src + k, 8);                                                      \
          } else {                                                                          \
            for (Py_ssize_t j = k; j < stop; j++) word |= src[j];                           \
          }                                                                                 \
          if (!word) continue;                                                              \
          for (i = k / BPP; i <= (stop - 1) / BPP; i++) /* the pixels these bytes touch */  \
            cur[i] = lanes_add(PIXEL(src, i, wide), up[i]);                                  \
        }                                                                                   \
        return 0;                                                                           \
      }                                                                                     \
      case 3: /* Average: + floor((left + up) / 2) */                                       \
        for (i = 0; i < width; i++)                                                         \
          cur[i] = a = lanes_add(PIXEL(src, i, wide), lanes_avg(a, up[i]));                  \
        return 0;                                                                           \
      case 4: /* Paeth */                                                                   \
        for (i = 0; i < width; i++) {                                                       \
          uint32_t b = up[i], x = PIXEL(src, i, wide), predictor;                           \
          if (b == c) /* every lane: |p - a| = 0, so a */                                   \
            predictor = a;                                                                  \
          else if (a == c) /* every lane: |p - b| = 0 < |p - a|, so b */                    \
            predictor = b;                                                                  \
          else                                                                              \
            predictor = paeth_lanes(a, b, c);                                               \
          cur[i] = a = x ? lanes_add(x, predictor) : predictor;                             \
          c = b;                                                                            \
        }                                                                                   \
        return 0;                                                                           \
      default:                                                                              \
        return -1;                                                                          \
    }                                                                                       \
  }

DEFINE_UNFILTER_ROW(unfilter_row3, 3, pixel3)
DEFINE_UNFILTER_ROW(unfilter_row4, 4, pixel4)

PyDoc_STRVAR(unfilter_ids_doc,
"unfilter_ids(raw, out, height, width, channels)\n"
"\n"
"Un-filters the inflated image data `raw` of a non-interlaced 8-bit PNG (`channels` 3: RGB,\n"
"4: RGBA; `height` rows of a filter byte + width * channels bytes; extra bytes at the end are\n"
"ignored) into `out`, a writable C-contiguous buffer of height * width uint32 (e.g. a numpy\n"
"array), as ids R + 256 G + 65536 B. Raises ValueError on a size mismatch or an unknown\n"
"filter type (the row is named).");

static PyObject *unfilter_ids(PyObject *self, PyObject *args) {
  Py_buffer raw, out;
  Py_ssize_t height, width;
  int channels;
  (void)self;
  if (!PyArg_ParseTuple(args, "y*w*nni:unfilter_ids", &raw, &out, &height, &width, &channels))
    return NULL;
  PyObject *result = NULL;
  uint32_t *zeros = NULL;
  if (channels != 3 && channels != 4) {
    PyErr_Format(PyExc_ValueError, "unsupported channel count %d", channels);
    goto done;
  }
  if (height < 0 || width < 0 || (width && height > PY_SSIZE_T_MAX / 4 / width) ||
      width > (PY_SSIZE_T_MAX - 1) / channels ||
      (height && 1 + width * channels > PY_SSIZE_T_MAX / height)) {
    PyErr_SetString(PyExc_ValueError, "image too large");
    goto done;
  }
  const Py_ssize_t stride = 1 + width * channels;
  if (raw.len < height * stride) {
    PyErr_Format(PyExc_ValueError, "image data too short: %zd bytes for %zd rows of %zd",
                 raw.len, height, stride);
    goto done;
  }
  if (out.len != height * width * (Py_ssize_t)sizeof(uint32_t) ||
      !PyBuffer_IsContiguous(&out, 'C')) {
    PyErr_SetString(PyExc_ValueError, "out must be a C-contiguous buffer of height * width uint32");
    goto done;
  }
  zeros = (uint32_t *)PyMem_Calloc(width ? (size_t)width : 1, sizeof(uint32_t));
  if (zeros == NULL) {
    PyErr_NoMemory();
    goto done;
  }
  Py_ssize_t bad_row = -1;
  int bad_type = 0;
  Py_BEGIN_ALLOW_THREADS
  const uint8_t *src = (const uint8_t *)raw.buf;
  uint32_t *ids = (uint32_t *)out.buf;
  for (Py_ssize_t y = 0; y < height; y++) {
    const uint8_t *row = src + y * stride;
    uint32_t *cur = ids + y * width;
    const uint32_t *up = y ? cur - width : zeros;
    /* Wide loads read one byte past a pixel: the next row's filter type, or for the last
     * pixel of the last row past the data. */
    const Py_ssize_t wide = y + 1 < height ? width : width - 1;
    int status = channels == 3 ? unfilter_row3(row[0], row + 1, up, cur, width, wide)
                               : unfilter_row4(row[0], row + 1, up, cur, width, wide);
    if (status) {
      bad_row = y;
      bad_type = row[0];
      break;
    }
  }
  if (channels == 4 && bad_row < 0) /* drop alpha, now that no row needs it */
    for (Py_ssize_t i = 0; i < height * width; i++) ids[i] &= 0xffffffu;
  Py_END_ALLOW_THREADS
  if (bad_row >= 0) {
    PyErr_Format(PyExc_ValueError, "unknown PNG filter type %d in row %zd", bad_type, bad_row);
    goto done;
  }
  result = Py_NewRef(Py_None);
done:
  PyMem_Free(zeros);
  PyBuffer_Release(&raw);
  PyBuffer_Release(&out);
  return result;
}

static PyMethodDef methods[] = {
    {"unfilter_ids", unfilter_ids, METH_VARARGS, unfilter_ids_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_png_unfilter",
    .m_doc = "PNG scanline un-filtering straight into panoptic ids (see the C source's comment).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__png_unfilter(void) { return PyModule_Create(&module); }
