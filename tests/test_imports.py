"""rap_jax/reference (numpy loops for tests) is never imported by the package itself.

Every module of rap_jax outside rap_jax/reference is parsed with `ast`; absolute imports,
relative imports (resolved against the module's package) and `importlib.import_module("...")`
calls with a literal name are all checked.
"""
from __future__ import annotations

import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "rap_jax"
FORBIDDEN = "rap_jax.reference"


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(REPO).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def _imported_names(source: str, module: str, is_package: bool) -> list[str]:
  """Fully qualified names a module's source imports (`from a import b` yields a and a.b)."""
  package = module if is_package else module.rpartition(".")[0]
  names = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      names += [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = package.split(".")
        base = base[:len(base) - (node.level - 1)]
        base = ".".join(base + ([node.module] if node.module else []))
      else:
        base = node.module
      names.append(base)
      names += [f"{base}.{alias.name}" for alias in node.names]
    elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name)) and
          getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module" and
          node.args and isinstance(node.args[0], ast.Constant) and
          isinstance(node.args[0].value, str)):
      names.append(node.args[0].value)
  return names


def _imports_reference(names) -> bool:
  return any(n == FORBIDDEN or n.startswith(FORBIDDEN + ".") for n in names)


def test_detector_on_drawn_sources():
  bad = [
      "import rap_jax.reference.nms",
      "from rap_jax.reference import nms",
      "from rap_jax import reference",
      "from rap_jax.reference.nms import nms as ref_nms",
      "from ..reference import nms",  # inside rap_jax.ops.x
      "from .. import reference",
      "import importlib\nimportlib.import_module('rap_jax.reference.masks')",
  ]
  for src in bad:
    assert _imports_reference(_imported_names(src, "rap_jax.ops.x", False)), src
  good = ["import rap_jax.ops.nms", "from rap_jax.ops import boxes", "from . import boxes",
          "from ..ops.resize import source_coords_at", "import numpy as np",
          "x = 'rap_jax.reference'"]
  for src in good:
    assert not _imports_reference(_imported_names(src, "rap_jax.ops.x", False)), src
  # Relative imports resolve against the package for __init__ modules.
  assert _imports_reference(_imported_names("from . import reference", "rap_jax", True))


# Checking harnesses, not the model path: the numpy references themselves and rap_jax/parity (the
# training-parity harness of tests and scripts/train_parity.py, which may use the references).
HARNESSES = ("reference", "parity")
HARNESS_MODULES = ("rap_jax.reference", "rap_jax.parity")


def test_package_never_imports_reference():
  """No module of the package but the harnesses imports the references or the harnesses."""
  files = [p for p in sorted(PACKAGE.rglob("*.py"))
           if not set(HARNESSES) & set(p.relative_to(PACKAGE).parts)]
  assert len(files) > 20 and any("ops" in p.parts for p in files)
  offenders = []
  for path in files:
    names = _imported_names(path.read_text(encoding="utf-8"), _module_name(path),
                            path.name == "__init__.py")
    bad = sorted({n for n in names for h in HARNESS_MODULES if n == h or n.startswith(h + ".")})
    if bad:
      offenders.append(f"{path.relative_to(REPO)}: {', '.join(bad)}")
  assert not offenders, "modules importing rap_jax.reference:\n" + "\n".join(offenders)
