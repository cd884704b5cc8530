"""A torch-free, code-free reader of PyTorch `.pth` checkpoints (SPEC §9.0).

Both serializations that `torch.save` writes are read without importing torch:

* legacy (PyTorch < 1.6, what the original's PyTorch 1.0 wrote): consecutive pickles of the magic
  number 0x1950a86a20f9469cfc6c, the protocol version 1001, a sys-info dict, the object (tensors are
  `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` with persistent ids
  `('storage', StorageType, key, location, numel, view_meta)`), the list of storage keys, then per
  key an int64 element count followed by the raw bytes;
* zip (PyTorch >= 1.6): `<archive>/data.pkl` with persistent ids
  `('storage', StorageType, key, location, numel)`, storages in `<archive>/data/<key>`, optional
  `<archive>/byteorder`.

Every pickle goes through `_SafeUnpickler`, whose `find_class` knows only the handful of names a
tensor checkpoint needs (`ALLOWED_GLOBALS`) and returns this module's own stand-ins for them; any
other global (`os.system`, `builtins.eval`, ...) raises `UnsafePickleError` before anything is
called. Tensors come back as `TensorRef`s; their bytes are read only when `read_array` is called, so
optimizer state in a training checkpoint costs nothing.
"""
from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
import struct
import zipfile
from typing import Any, BinaryIO, Callable, Mapping

import numpy as np

try:  # bfloat16 storages (not in the original's checkpoints); ml_dtypes ships with jax.
  import ml_dtypes
  _BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
  _BFLOAT16 = None

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


class PthFormatError(ValueError):
  """The file is not a readable PyTorch checkpoint; the message names the file."""


class UnsafePickleError(PthFormatError):
  """The pickle asks for a global outside `ALLOWED_GLOBALS`; nothing from it was run."""


@dataclasses.dataclass(frozen=True)
class StorageType:
  """Stand-in for `torch.FloatStorage` & co.: only carries the element dtype (little endian)."""
  name: str
  dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class TorchDtype:
  """Stand-in for `torch.float32` & co. (zip files with untyped storages)."""
  name: str
  dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class StorageRef:
  """One storage of the file: `numel` elements of `dtype`; `view` = (offset, numel) in elements."""
  key: str
  dtype: np.dtype
  numel: int
  view: tuple[int, int] | None = None


@dataclasses.dataclass(frozen=True)
class TensorRef:
  """A strided tensor over a storage, not yet read. Offsets and strides in elements."""
  storage: StorageRef
  offset: int
  shape: tuple[int, ...]
  stride: tuple[int, ...]
  dtype: np.dtype


def _storage_dtypes() -> dict[str, np.dtype]:
  table = {
      "Double": "<f8", "Float": "<f4", "Half": "<f2", "Long": "<i8", "Int": "<i4",
      "Short": "<i2", "Char": "i1", "Byte": "u1", "Bool": "?",
  }
  out = {f"{k}Storage": np.dtype(v) for k, v in table.items()}
  if _BFLOAT16 is not None:
    out["BFloat16Storage"] = _BFLOAT16
  return out


def _torch_dtypes() -> dict[str, np.dtype]:
  names = {
      "float64": "<f8", "double": "<f8", "float32": "<f4", "float": "<f4", "float16": "<f2",
      "half": "<f2", "int64": "<i8", "long": "<i8", "int32": "<i4", "int": "<i4",
      "int16": "<i2", "short": "<i2", "int8": "i1", "uint8": "u1", "bool": "?",
  }
  out = {k: np.dtype(v) for k, v in names.items()}
  if _BFLOAT16 is not None:
    out["bfloat16"] = _BFLOAT16
  return out


def _check_ints(what: str, values: Any) -> tuple[int, ...]:
  if not isinstance(values, tuple) or not all(type(v) is int for v in values):
    raise TypeError(f"tensor {what} must be a tuple of ints, got {values!r}")
  return values


def _rebuild_tensor(storage, storage_offset, size, stride, dtype=None) -> TensorRef:
  """Our `torch._utils._rebuild_tensor`: validates the arguments and records them."""
  if not isinstance(storage, StorageRef):
    raise TypeError(f"tensor storage must come from a persistent id, got {type(storage).__name__}")
  if type(storage_offset) is not int or storage_offset < 0:
    raise TypeError(f"bad storage offset {storage_offset!r}")
  size, stride = _check_ints("size", tuple(size)), _check_ints("stride", tuple(stride))
  if len(size) != len(stride):
    raise TypeError(f"size {size} and stride {stride} differ in length")
  return TensorRef(storage, storage_offset, size, stride, storage.dtype if dtype is None else dtype)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None) -> TensorRef:
  del requires_grad, backward_hooks, metadata  # autograd details, irrelevant for weights
  return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None) -> TensorRef:
  del requires_grad, backward_hooks, metadata
  if not isinstance(dtype, TorchDtype):
    raise TypeError(f"bad tensor dtype {dtype!r}")
  return _rebuild_tensor(storage, storage_offset, size, stride, dtype.dtype)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None) -> TensorRef:
  del requires_grad, backward_hooks, state
  if not isinstance(data, TensorRef):
    raise TypeError(f"parameter data must be a tensor, got {type(data).__name__}")
  return data


def _allowed_globals() -> dict[tuple[str, str], Any]:
  allowed: dict[tuple[str, str], Any] = {
      ("collections", "OrderedDict"): collections.OrderedDict,
      ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
      ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
      ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
      ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
      ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
      ("torch", "Size"): tuple,
      ("torch.storage", "UntypedStorage"): StorageType("UntypedStorage", np.dtype("u1")),
      ("torch", "UntypedStorage"): StorageType("UntypedStorage", np.dtype("u1")),
  }
  for name, dtype in _storage_dtypes().items():
    allowed[("torch", name)] = StorageType(name, dtype)
  for name, dtype in _torch_dtypes().items():
    allowed[("torch", name)] = TorchDtype(name, dtype)
  return allowed


# (module, name) -> our stand-in. Nothing else can be named by a pickle we read.
ALLOWED_GLOBALS: Mapping[tuple[str, str], Any] = _allowed_globals()


class _SafeUnpickler(pickle.Unpickler):
  """`pickle.Unpickler` that resolves globals only through `ALLOWED_GLOBALS`."""

  def __init__(self, file: BinaryIO, path: str, storages: dict[str, StorageRef] | None = None):
    super().__init__(file)
    self._path = path
    self.storages = {} if storages is None else storages

  def find_class(self, module: str, name: str) -> Any:
    try:
      return ALLOWED_GLOBALS[(module, name)]
    except (KeyError, TypeError):
      shown = f"{module}.{name}"
      if module == "__builtin__":  # Python 2 spelling that protocol-2 pickles use
        shown += f" (builtins.{name})"
      raise UnsafePickleError(
          f"{self._path}: refused to unpickle global '{shown}': only tensor-checkpoint "
          "globals are allowed (torch._utils._rebuild_tensor_v2, torch.*Storage, "
          "collections.OrderedDict, ...); nothing from the file was run") from None

  def persistent_load(self, pid: Any) -> StorageRef:
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and _text(pid[0]) == "storage"):
      raise TypeError(f"unsupported persistent id {pid!r}")
    storage_type, key, _, numel = pid[1:5]
    view = pid[5] if len(pid) == 6 else None
    if not isinstance(storage_type, StorageType) or type(numel) is not int or numel < 0:
      raise TypeError(f"bad storage persistent id {pid!r}")
    key = _text(key)
    root = self.storages.setdefault(key, StorageRef(key, storage_type.dtype, numel))
    if root.dtype != storage_type.dtype or root.numel != numel:
      raise TypeError(f"storage {key!r} declared twice with different types or sizes")
    if view is None:
      return root
    _, offset, size = view  # (view_key, offset, numel): a slice of the root, in elements
    if type(offset) is not int or type(size) is not int or offset < 0 or offset + size > numel:
      raise TypeError(f"bad storage view {view!r}")
    return dataclasses.replace(root, view=(offset, size))


def _text(value: Any) -> str:
  return value.decode("ascii") if isinstance(value, bytes) else str(value)


@dataclasses.dataclass
class PthFile:
  """An opened checkpoint: `obj` is the unpickled object with `TensorRef` leaves."""
  path: str
  format: str                      # 'legacy' | 'zip'
  obj: Any
  _read_storage: Callable[[StorageRef], bytes]
  _little_endian: bool = True

  def read_array(self, ref: TensorRef) -> np.ndarray:
    """Reads one tensor as a contiguous, native-endian numpy array of `ref.shape`."""
    storage = ref.storage
    if ref.dtype.itemsize != storage.dtype.itemsize and storage.dtype != np.dtype("u1"):
      raise PthFormatError(f"{self.path}: tensor dtype {ref.dtype} does not fit its storage")
    data = self._read_storage(storage)
    dtype = ref.dtype if self._little_endian else ref.dtype.newbyteorder(">")
    flat = np.frombuffer(data, dtype=dtype, count=len(data) // dtype.itemsize)
    if storage.view is not None:
      flat = flat[storage.view[0]:storage.view[0] + storage.view[1]]
    if 0 in ref.shape:
      return np.zeros(ref.shape, ref.dtype)
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride))
    if min(ref.stride, default=0) < 0 or last >= flat.size:
      raise PthFormatError(f"{self.path}: tensor (offset {ref.offset}, shape {ref.shape}, "
                           f"stride {ref.stride}) reads past its storage of {flat.size} elements")
    view = np.lib.stride_tricks.as_strided(
        flat[ref.offset:], shape=ref.shape, strides=[s * dtype.itemsize for s in ref.stride])
    return np.array(view, dtype=ref.dtype, order="C")  # a C-contiguous, native-endian copy


def _unpickle(f: BinaryIO, path: str, storages: dict[str, StorageRef] | None = None) -> Any:
  return _SafeUnpickler(f, path, storages).load()


def _open_legacy(path: str, f: BinaryIO) -> PthFile:
  magic = _unpickle(f, path)
  if magic != LEGACY_MAGIC:
    raise PthFormatError(f"{path}: not a PyTorch checkpoint (no zip archive, no legacy magic "
                         "number; Detectron .pkl weights are not supported)")
  protocol = _unpickle(f, path)
  if protocol != LEGACY_PROTOCOL:
    raise PthFormatError(f"{path}: unsupported legacy protocol version {protocol!r}")
  sys_info = _unpickle(f, path)
  little = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True
  storages: dict[str, StorageRef] = {}
  obj = _unpickle(f, path, storages)
  keys = _unpickle(f, path)
  if not isinstance(keys, list) or set(map(_text, keys)) != set(storages):
    raise PthFormatError(f"{path}: storage key list does not match the storages of the pickle")
  # Data section: per key an int64 element count then the raw bytes. Record where each starts.
  size = os.fstat(f.fileno()).st_size
  where: dict[str, int] = {}
  for key in map(_text, keys):
    header = f.read(8)
    if len(header) < 8:
      raise PthFormatError(f"{path}: truncated file (data of storage {key!r} missing)")
    (count,) = struct.unpack("<q" if little else ">q", header)
    storage = storages[key]
    if count != storage.numel:
      raise PthFormatError(f"{path}: storage {key!r} has {count} elements on disk, "
                           f"{storage.numel} in the pickle; corrupt file?")
    where[key] = f.tell()
    end = f.tell() + count * storage.dtype.itemsize
    if end > size:
      raise PthFormatError(f"{path}: truncated file (storage {key!r} needs bytes up to {end}, "
                           f"file has {size})")
    f.seek(end)

  def read_storage(storage: StorageRef) -> bytes:
    f.seek(where[storage.key])
    return f.read(storage.numel * storage.dtype.itemsize)

  return PthFile(path, "legacy", obj, read_storage, little)


def _open_zip(path: str, f: BinaryIO) -> PthFile:
  archive = zipfile.ZipFile(f)
  pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
  if len(pickles) != 1:
    raise PthFormatError(f"{path}: zip archive without a single '<name>/data.pkl' "
                         "(a TorchScript or other zip file?)")
  prefix = pickles[0][:-len("data.pkl")]
  little = True
  if prefix + "byteorder" in archive.namelist():
    little = archive.read(prefix + "byteorder").decode("ascii").strip() != "big"
  storages: dict[str, StorageRef] = {}
  obj = _unpickle(io.BytesIO(archive.read(pickles[0])), path, storages)

  def read_storage(storage: StorageRef) -> bytes:
    name = f"{prefix}data/{storage.key}"
    try:
      data = archive.read(name)
    except KeyError:
      raise PthFormatError(f"{path}: storage record {name!r} missing") from None
    if len(data) < storage.numel * storage.dtype.itemsize:
      raise PthFormatError(f"{path}: storage record {name!r} is shorter than its "
                           f"{storage.numel} elements")
    return data

  return PthFile(path, "zip", obj, read_storage, little)


class open_pth:  # noqa: N801 (a context manager used like a function)
  """`with open_pth(path) as pth:` -> `PthFile`; failures are `PthFormatError`s naming `path`."""

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    self._file: BinaryIO | None = None

  def __enter__(self) -> PthFile:
    if not os.path.isfile(self.path):
      raise PthFormatError(f"{self.path}: no such file")
    self._file = open(self.path, "rb")
    try:
      head = self._file.read(4)
      self._file.seek(0)
      if not head:
        raise PthFormatError(f"{self.path}: empty file")
      if head == b"PK\x03\x04":
        return _wrap_reads(_open_zip(self.path, self._file))
      return _wrap_reads(_open_legacy(self.path, self._file))
    except BaseException as e:
      self._file.close()
      raise _as_format_error(self.path, e) from e

  def __exit__(self, *exc) -> None:
    if self._file is not None:
      self._file.close()


def _as_format_error(path: str, error: BaseException) -> BaseException:
  if isinstance(error, PthFormatError):
    return error
  if isinstance(error, (KeyboardInterrupt, SystemExit, MemoryError)):
    return error
  return PthFormatError(f"{path}: corrupt or truncated PyTorch checkpoint "
                        f"({type(error).__name__}: {error})")


def _wrap_reads(pth: PthFile) -> PthFile:
  """Makes later storage reads report failures (e.g. a bad zip CRC) as `PthFormatError`s too."""
  read = pth._read_storage

  def safe_read(storage: StorageRef) -> bytes:
    try:
      return read(storage)
    except Exception as e:
      raise _as_format_error(pth.path, e) from e

  pth._read_storage = safe_read
  return pth
