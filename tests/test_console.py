"""The console: logs below WARNING go to <workdir>/log.txt, the summary table, the curves picture."""
import json
import logging as pylogging

import numpy as np
from absl import logging
from PIL import Image

from rap_jax import console


def test_info_goes_to_the_log_file_not_the_console(tmp_path, capfd):
  path = console.setup_logging(tmp_path)
  try:
    logging.info("an info line for the file only")
    logging.warning("a warning for both")
    pylogging.getLogger("tensorflow").warning("calling map_fn_v2 with dtype is deprecated")
    for h in pylogging.getLogger().handlers:
      h.flush()
    text = path.read_text()
    assert "an info line for the file only" in text and "a warning for both" in text
    assert "map_fn_v2" in text  # library noise: in the file ...
    err = capfd.readouterr().err
    assert "an info line for the file only" not in err
    # ... and not on the console: the console (absl) handler filters library deprecation notes,
    # never our own warnings nor anything at ERROR.
    noise = [f for f in logging.get_absl_handler().filters if isinstance(f, console._LibraryNoise)]
    assert len(noise) == 1
    record = lambda name, level, msg: pylogging.LogRecord(name, level, __file__, 1, msg, (), None)
    assert not noise[0].filter(record("tensorflow", pylogging.WARNING, "map_fn_v2 is deprecated"))
    assert not noise[0].filter(record("absl", pylogging.WARNING, "Metadata file does not exist"))
    assert noise[0].filter(record("rap_jax.train", pylogging.WARNING, "option x is deprecated"))
    assert noise[0].filter(record("tensorflow", pylogging.ERROR, "x is deprecated"))
    assert noise[0].filter(record("absl", pylogging.WARNING, "a warning for both"))
  finally:
    for f in list(logging.get_absl_handler().filters):
      logging.get_absl_handler().removeFilter(f)
    root = pylogging.getLogger()
    for h in [h for h in root.handlers if isinstance(h, pylogging.FileHandler)]:
      root.removeHandler(h)
      h.close()
    logging.get_absl_handler().setLevel(pylogging.NOTSET)


def test_summary_table_shows_every_fusion_and_where_outputs_are(tmp_path):
  group = lambda pq: {"pq": pq, "sq": 0.8, "rq": 0.5, "n": 3}
  metrics = {"panoptic": {"rap": {"all": group(0.41), "things": group(0.52), "stuff": group(0.3)},
                          "heuristic": {"all": group(0.40), "things": group(0.47),
                                        "stuff": group(0.3)}},
             "bbox": {"AP": 0.5, "AP50": 0.75}, "segm": {"AP": 0.45, "AP50": 0.7},
             "relation": {"accuracy": 0.9, "score_order_accuracy": 0.6, "pairs": 120},
             "split": "val2017", "num_images": 8}
  text = console.summary_table({"train": metrics, "predict": {"images": 8, "detections": 30,
                                                              "panoptic_json": "p.json"}}, tmp_path)
  assert "rap" in text and "heuristic" in text and "52.0" in text and "47.0" in text
  assert "box AP 50.0  AP50 75.0" in text and "relation accuracy 90.0 (score order 60.0)" in text
  assert "over 120 pairs" in text and "p.json" in text and str(tmp_path / "metrics.json") in text


def test_curves_png(tmp_path):
  records = [{"stage": 1 if s <= 20 else 2, "step": s, "loss": 10.0 / s, "loss_mask": 1.0 / s,
              "lr": 0.01 * min(1.0, s / 5)} for s in range(1, 31)]
  metrics = tmp_path / "train_metrics.jsonl"
  metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
  out = console.plot_curves(metrics, tmp_path / "curves.png")
  image = np.asarray(Image.open(out).convert("L"))
  assert image.shape[0] > 300 and image.shape[1] > 500
  assert (image < 128).mean() > 0.005  # lines and text were drawn


def test_curves_names_a_bad_line(tmp_path):
  metrics = tmp_path / "train_metrics.jsonl"
  metrics.write_text('{"step": 1, "loss": 1.0, "lr": 0.1}\nnot json\n')
  try:
    console.plot_curves(metrics, tmp_path / "c.png")
  except ValueError as e:
    assert "train_metrics.jsonl:2" in str(e)
  else:
    raise AssertionError("a malformed line must be named")
