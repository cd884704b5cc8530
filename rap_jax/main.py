"""Command line of rap_jax: train, evaluate or predict with one config file.

  python -m rap_jax.main --config configs/demo.py --workdir runs/demo
  python -m rap_jax.main --config configs/rap_r50.py --workdir runs/rap_r50_eval --mode eval \
      --config.init_checkpoint=runs/rap_r50_ckpt
  python -m rap_jax.main --config configs/fixtures/rap_small.py --workdir runs/p --mode predict \
      --config.init_checkpoint=runs/rap_small_ckpt --config.predict.images='photos/*.jpg'

Any config value can be overridden with `--config.a.b=value`; unknown keys and invalid values stop
the program with a message naming them (rap_jax/config_checks.py). Without `--mode`, the config's
`modes` run in order (configs/demo.py: train, then predict).
"""
from __future__ import annotations

import importlib
import os
import pathlib
import shutil
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from rap_jax import config_checks
from rap_jax import console

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics and predictions.")
flags.DEFINE_enum("mode", None, config_checks.MODES, "Mode to run (default: config.modes).")
flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() before anything else "
                  "(implied when JAX_COORDINATOR_ADDRESS is set).")
flags.mark_flags_as_required(["config", "workdir"])

# mode -> (module, function(config, workdir)); imported only when the mode runs.
MODE_FUNCTIONS = {
    "train": ("rap_jax.train", "train_and_evaluate"),
    "eval": ("rap_jax.evaluate", "run"),
    "predict": ("rap_jax.predict", "run"),
}


def mode_function(mode: str):
  """The function that runs `mode`."""
  module, function = MODE_FUNCTIONS[mode]
  return getattr(importlib.import_module(module), function)


def prepare_data(config) -> None:
  """Generates the built-in synthetic dataset into `config.data.data_dir` unless it is there."""
  if config.data.name != "synthetic":
    return
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from rap_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  root, s = pathlib.Path(config.data.data_dir), config.data.synthetic
  args = dict(num_train=s.num_train, num_val=s.num_val, image_size=(s.image_size,) * 2,
              seed=s.seed, inset_prob=s.inset_prob, val_seed=s.get("val_seed", -1))
  if jax.process_index() == 0 and not synthetic.is_complete(root, **args):
    if root.is_dir() and any(root.iterdir()) and not (root / "synthetic_config.json").is_file():
      sys.exit(f"rap_jax: data.data_dir={str(root)!r} is not empty and holds no synthetic "
               "dataset; choose a new folder for data.name='synthetic'")
    for sub in ("images", "annotations", "tfds"):  # no stale files of another configuration
      shutil.rmtree(root / sub, ignore_errors=True)
    logging.info("Generating the synthetic dataset %s into %s", args, root)
    print(f"rap_jax: generating the synthetic dataset into {root} ({s.num_train} train + "
          f"{s.num_val} val images, seed {s.seed})", flush=True)
    # One process: forking after JAX has started threads can deadlock.
    summary = synthetic.generate(root, workers=1, progress=True, **args)
    logging.info("Synthetic dataset: %s", summary)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("synthetic data ready")


def hide_gpus_from_tensorflow() -> None:
  """tf.data runs on the CPU; without this TensorFlow would grab GPU memory meant for JAX."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.experimental.set_visible_devices([], "GPU")


def initialize_jax(multihost: bool) -> None:
  """Joins the other hosts (--multihost or JAX_COORDINATOR_ADDRESS) and logs the devices."""
  import jax  # pylint: disable=g-import-not-at-top
  if multihost or os.environ.get("JAX_COORDINATOR_ADDRESS"):
    # Cloud TPU, SLURM, Open MPI and Kubernetes are detected by JAX; elsewhere the coordinator,
    # process count and id come from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID.
    env = {k: int(os.environ[v]) for k, v in (("num_processes", "JAX_NUM_PROCESSES"),
                                              ("process_id", "JAX_PROCESS_ID")) if v in os.environ}
    jax.distributed.initialize(**env)
  logging.info("JAX process %d of %d; %d local / %d global devices: %s", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(), jax.devices())


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
  config, workdir = FLAGS.config, FLAGS.workdir
  modes = (FLAGS.mode,) if FLAGS.mode else tuple(config.modes)
  try:
    config_checks.check_config(config, modes)
  except config_checks.ConfigError as e:
    sys.exit(f"rap_jax: {e}")
  os.makedirs(workdir, exist_ok=True)
  log_path = console.setup_logging(workdir)  # before TensorFlow / JAX start logging
  hide_gpus_from_tensorflow()
  initialize_jax(FLAGS.multihost)
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    print(f"rap_jax: modes {', '.join(modes)} in {workdir} (details in {log_path})", flush=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  prepare_data(config)
  results = {}
  for m in modes:
    logging.info("Running mode %s in %s", m, workdir)
    results[m] = mode_function(m)(config, workdir)
  if jax.process_index() == 0:
    print(console.summary_table(results, workdir), flush=True)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, plus a message naming an unknown `--config.a.b` override key."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:  # ml_collections names only the last path element
    message = None
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if spec is None and "--config" in argv[:-1]:
      spec = argv[argv.index("--config") + 1]
    if spec:
      try:
        message = config_checks.unknown_override_message(
            config_checks.load_config_file(spec), argv)
      except Exception:  # pylint: disable=broad-except
        pass
    sys.exit(f"rap_jax: {message or repr(e)}")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
