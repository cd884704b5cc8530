"""What a person sees: quiet console logs, a summary table at the end, the training curves.

* `setup_logging(workdir)`: library and absl logs at every level go to `<workdir>/log.txt`; the
  console shows WARNING and above only, less the libraries' deprecation notes (`LIBRARY_NOISE`),
  plus our progress bars and the final summary.
* `summary_table(results, workdir)`: the end-of-run table (PQ of each fusion, box/mask AP,
  relation accuracy, where the outputs are).
* `plot_curves(metrics_jsonl, out_png)`: losses and learning rate over the iterations.
"""
from __future__ import annotations

import json
import logging as pylogging
import os
import pathlib
from typing import Any, Mapping

from absl import logging

LOG_FILE = "log.txt"
CURVES_FILE = "curves.png"
# Library WARNINGs that say nothing to a user of rap_jax (API deprecations inside TensorFlow /
# tensorflow-datasets, tfds' note that a deliberately shuffled read is not in file order and
# that our builder has a named configuration, orbax's note that a step directory of a training
# checkpoint has no top-level metadata file): kept in log.txt, not shown on the console.
LIBRARY_NOISE = ("is deprecated", "Instructions for updating", "is an ordered dataset",
                 "Using custom data configuration", "Metadata file does not exist")


class _LibraryNoise(pylogging.Filter):
  """Drops `LIBRARY_NOISE` warnings of other packages from the console (not from log.txt)."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    if record.levelno >= pylogging.ERROR or record.name.startswith("rap_jax"):
      return True
    message = record.getMessage()
    return not any(phrase in message for phrase in LIBRARY_NOISE)


def setup_logging(workdir: str | os.PathLike) -> pathlib.Path:
  """INFO and above -> `<workdir>/log.txt`; WARNING and above -> the console. Returns the path.

  TensorFlow's C++ INFO/WARNING lines are silenced unless TF_CPP_MIN_LOG_LEVEL is set already.
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  path = pathlib.Path(workdir) / LOG_FILE
  path.parent.mkdir(parents=True, exist_ok=True)
  root = pylogging.getLogger()
  if not any(isinstance(h, pylogging.FileHandler) and pathlib.Path(h.baseFilename) == path
             for h in root.handlers):
    handler = pylogging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setLevel(pylogging.INFO)
    handler.setFormatter(pylogging.Formatter(
        "%(asctime)s %(levelname).1s %(name)s %(filename)s:%(lineno)d] %(message)s"))
    root.addHandler(handler)
  # Library loggers keep level NOTSET and inherit INFO from the root, so their records reach the
  # file. (Setting the 'jax' logger itself before jax is imported would make jax attach its own
  # console handler and turn on its C++ INFO logs: jax_logging_level defaults to that level.)
  root.setLevel(pylogging.INFO)
  logging.set_verbosity(logging.INFO)
  console = logging.get_absl_handler()
  console.setLevel(pylogging.WARNING)
  if not any(isinstance(f, _LibraryNoise) for f in console.filters):
    console.addFilter(_LibraryNoise())
  try:  # tfds' download/preparation progress bars on the console
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    tfds.disable_progress_bar()
  except ImportError:
    pass
  return path


def _pct(v: Any) -> str:
  return "n/a" if v is None else f"{100 * float(v):.1f}"


def summary_table(results: Mapping[str, Any], workdir: str | os.PathLike) -> str:
  """End-of-run summary from the modes' results ({'train'|'eval': metrics, 'predict': summary})."""
  root = pathlib.Path(workdir)
  lines = []
  metrics = results.get("eval") or results.get("train")
  if metrics:
    panoptic = metrics.get("panoptic", {})
    lines.append(f"{'fusion':12s}{'PQ':>8s}{'PQ th':>8s}{'PQ st':>8s}   "
                 f"(split {metrics.get('split', '?')}, {metrics.get('num_images', '?')} images)")
    for method, groups in panoptic.items():
      lines.append(f"{method:12s}{_pct(groups['all']['pq']):>8s}{_pct(groups['things']['pq']):>8s}"
                   f"{_pct(groups['stuff']['pq']):>8s}")
    for iou_type, name in (("bbox", "box"), ("segm", "mask")):
      if iou_type in metrics:
        m = metrics[iou_type]
        lines.append(f"{name} AP {_pct(m.get('AP'))}  AP50 {_pct(m.get('AP50'))}")
    rel = metrics.get("relation")
    if rel:
      lines.append(f"relation accuracy {_pct(rel.get('accuracy'))} (score order "
                   f"{_pct(rel.get('score_order_accuracy'))}) over {rel.get('pairs', 0)} pairs")
    lines.append(f"metrics: {root / 'metrics.json'}")
  if (root / CURVES_FILE).is_file():
    lines.append(f"training curves: {root / CURVES_FILE}")
  pred = results.get("predict")
  if pred:
    lines.append(f"predictions: {pred.get('images', 0)} images, {pred.get('detections', 0)} "
                 f"detections -> {pred.get('panoptic_json', root / 'panoptic.json')}")
  lines.append(f"log: {root / LOG_FILE}")
  width = max(len(x) for x in lines)
  return "\n".join(["=" * width, *lines, "=" * width])


def read_metrics_jsonl(path: str | os.PathLike) -> list[dict]:
  """The records of train_metrics.jsonl (a line that is not JSON is named in the error)."""
  records = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if line.strip():
        try:
          records.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{n}: not a JSON line ({e})") from e
  return records


def plot_curves(metrics_jsonl: str | os.PathLike, out_png: str | os.PathLike) -> pathlib.Path:
  """Losses (log scale, one line per loss term and the total) and the LR over iterations."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  records = read_metrics_jsonl(metrics_jsonl)
  if not records:
    raise ValueError(f"{metrics_jsonl}: no training records to plot")
  steps = [r["step"] for r in records]
  fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(9, 7), sharex=True,
                                       gridspec_kw={"height_ratios": [3, 1]})
  names = ["loss"] + sorted({k for r in records for k in r if k.startswith("loss_")})
  for name in names:
    pts = [(r["step"], r[name]) for r in records if r.get(name) is not None and r[name] > 0]
    if pts:
      ax_loss.plot(*zip(*pts), label=name, linewidth=2.2 if name == "loss" else 1.2)
  ax_loss.set_yscale("log")
  ax_loss.set_ylabel("loss (mean over each logging window)")
  ax_loss.legend(fontsize=8, ncol=2)
  ax_loss.grid(alpha=0.3)
  for a, b in zip(records, records[1:]):  # stage boundaries
    if a.get("stage") != b.get("stage"):
      for ax in (ax_loss, ax_lr):
        ax.axvline(a["step"], color="grey", linestyle="--", linewidth=1)
      ax_loss.text(a["step"], ax_loss.get_ylim()[1], f" stage {b.get('stage')}", va="top",
                   fontsize=8)
  ax_lr.plot(steps, [r.get("lr", 0.0) for r in records], color="black")
  ax_lr.set_ylabel("learning rate")
  ax_lr.set_xlabel("iteration")
  ax_lr.grid(alpha=0.3)
  fig.tight_layout()
  out = pathlib.Path(out_png)
  fig.savefig(out, dpi=90)
  plt.close(fig)
  return out
