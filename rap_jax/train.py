"""Train mode: the original's two training stages (SPEC §6), data parallel over a device mesh.

  python -m rap_jax.main --config configs/panoptic_fpn_r50.py --workdir runs/panoptic_fpn_r50
  python -m rap_jax.main --config configs/rap_r50.py --workdir runs/rap_r50 \
      --config.init_checkpoint=runs/panoptic_fpn_r50

`train_and_evaluate(config, workdir)` reads like a recipe: mesh -> stages -> for each stage:
data, model + initial weights, optimizer, checkpoint manager (resume), jitted step, loop; then
evaluation of the final weights.

Stages. A real config is ONE stage of the original, as its YAML: `train.stage` 1 (Panoptic FPN,
everything but the frozen stem/layer1 trained, warmup + steps) or 2 (relation finetune: only
`roi_heads/relation` trained, constant LR, iterations `start_iter + 1 .. max_iter` continuing the
stage-1 count; SPEC §6.2). `config.train.stages` (used by configs/demo.py, empty elsewhere) lists
several stages run in order in one workdir, each a dict of dotted config overrides; a stage after
the first starts from the previous stage's last checkpoint unless it sets `init_checkpoint`.

Initial weights of a stage (fresh start, nothing to resume):
  * `config.init_checkpoint` (a variables checkpoint from `python -m convert`, a step directory or
    a training workdir, its newest step): stage 1 may keep freshly initialised heads (the original
    initialises only the body from ImageNet); stage 2 may keep a fresh relation head (the stage-1
    model has none) and nothing else; every fresh subtree is logged;
  * stage 1 without it: everything freshly initialised. The original starts from ImageNet
    weights (`catalog://ImageNetPretrained/...`), which are not available offline here; convert
    them to a variables checkpoint to reproduce the original's recipe;
  * stage 2 without it: an error (a finetune needs the stage-1 model).

Checkpoints (`rap_jax.checkpoint`): `<workdir>/checkpoints/<step>` every `checkpoint_period`
steps and at `max_iter`; the newest 3 and the last of each stage are kept. A run restarted in the
same workdir resumes from the newest checkpoint: parameters, optimizer state (momentum, update
count = LR schedule position), step, and data position. The data stream is re-seeded at every
checkpoint boundary (seed of the segment = f(config.seed, first step of the segment)), so a resumed
run sees exactly the batches of an uninterrupted one and ends bit-identical (on a deterministic
backend). The original's DataLoader instead restarts its sampler on resume.

Per step: the 'sampling' PRNG stream folded with the step (RPN/ROI samplers); the loss is the
float32 sum of `PanopticRCNN.losses` in the original's order, each loss normalised per device and
averaged over devices as the original's per-GPU losses under DDP (`loss_groups`,
config.train.loss_normalization); gradients w.r.t. params only
(FrozenBN buffers are constants). A non-finite loss or gradient stops the run with an error naming
the step and the losses, before anything is saved: the last checkpoint stays the last good one.
Metrics go to the log and to `<workdir>/train_metrics.jsonl`.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import pathlib
import time
from typing import Any, Callable, Iterator, Mapping

from absl import logging
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from rap_jax import checkpoint
from rap_jax import config_checks
from rap_jax import optim
from rap_jax import sharding
from rap_jax.modeling import losses as loss_lib
from rap_jax.modeling.panoptic_rcnn import PanopticRCNN

METRICS_FILE = "train_metrics.jsonl"
# Named PRNG streams, derived from config.seed (STYLE.md "PRNG streams are named").
STREAMS = {"params": 0, "sampling": 1}
# Subtrees a fresh start may keep freshly initialised when loading `init_checkpoint`.
FRESH_STAGE1 = ("params/backbone/fpn", "params/rpn", "params/roi_heads", "params/semantic_head")
FRESH_STAGE2 = (checkpoint.RELATION_HEAD,)
# The static input of `model.init`: shapes of the variables do not depend on it.
INIT_CANVAS = 64


class NonFiniteLossError(FloatingPointError):
  """A training step produced a NaN/inf loss or gradient; nothing was saved after it."""


@flax.struct.dataclass
class TrainState:
  """Everything a training step changes (and what a checkpoint restores)."""
  step: jax.Array        # int32 [], completed updates (the original's `iteration`)
  params: Any            # variables['params']
  buffers: Any           # variables['buffers']: FrozenBatchNorm constants, never updated
  opt_state: Any         # optax state (no entries for frozen params)

  @property
  def variables(self) -> dict:
    return {"params": self.params, "buffers": self.buffers}


def stream_key(seed: int, name: str) -> jax.Array:
  """The PRNG key of a named stream."""
  return jax.random.fold_in(jax.random.PRNGKey(int(seed)), STREAMS[name])


def data_seed(seed: int, segment_start: int) -> int:
  """Seed of the data stream for steps segment_start+1.. (re-seeded at checkpoint boundaries)."""
  return int(np.random.SeedSequence([int(seed), int(segment_start)]).generate_state(1)[0])


# ------------------------------------------------------------------ stages


def _set_path(config: ml_collections.ConfigDict, path: str, value: Any) -> None:
  node = config
  *parents, leaf = path.split(".")
  for part in parents:
    if part not in node:
      raise KeyError(part)
    node = node[part]
  if leaf not in node:
    raise KeyError(leaf)
  node[leaf] = tuple(value) if isinstance(value, list) else value


def stage_configs(config: ml_collections.ConfigDict) -> list[ml_collections.ConfigDict]:
  """The stages of this run, in order: `config` itself, or one config per `train.stages` entry.

  Each entry of `config.train.stages` is a dict of dotted overrides ({'train.stage': 2, ...})
  applied to a copy of `config`. Stages must follow each other in the step count
  (`start_iter` >= the previous `max_iter`); every stage config must pass config_checks.
  """
  plan = tuple(config.train.get("stages", ()) or ())
  if not plan:
    return [config]
  stages = []
  for i, overrides in enumerate(plan):
    stage = config.copy_and_resolve_references()
    stage.train.stages = ()
    for path, value in dict(overrides).items():
      try:
        _set_path(stage, path, value)
      except (KeyError, AttributeError, TypeError) as e:
        raise ValueError(f"train.stages[{i}]: cannot set {path}={value!r} ({e})") from e
    try:
      config_checks.check_config(stage, ("train",))
    except config_checks.ConfigError as e:
      raise ValueError(f"train.stages[{i}]: {e}") from e
    if stages and stage.train.start_iter < stages[-1].train.max_iter:
      raise ValueError(f"train.stages[{i}]: train.start_iter={stage.train.start_iter} must be >= "
                       f"the previous stage's max_iter={stages[-1].train.max_iter}")
    stages.append(stage)
  return stages


# ------------------------------------------------------------------ model, state, step


def build_model(config) -> nn.Module:
  """The network of `config.model` (has `.losses(batch, rng)` for training)."""
  return PanopticRCNN.from_config(config.model)


def _init_fn(model: nn.Module) -> Callable[[jax.Array], Any]:
  images = jnp.zeros((1, INIT_CANVAS, INIT_CANVAS, 3), jnp.float32)
  hw = jnp.full((1, 2), INIT_CANVAS, jnp.int32)
  # An all-GroupNorm model (configs/tiny_gn.py) has no FrozenBN: an empty 'buffers' collection.
  return lambda rng: {"buffers": {}, **model.init(rng, images, hw, hw)}


def init_variables(model: nn.Module, rng: jax.Array, mesh) -> Any:
  """Fresh variables, created replicated on `mesh` (eval_shape -> shardings -> jit(init))."""
  init = _init_fn(model)
  abstract = jax.eval_shape(init, rng)
  shardings = jax.tree_util.tree_map(lambda _: sharding.replicated(mesh), abstract)
  return jax.jit(init, out_shardings=shardings)(rng)


def abstract_state(model: nn.Module, tx: optax.GradientTransformation, mesh) -> TrainState:
  """Shapes, dtypes and (replicated) shardings of a TrainState: restore targets."""
  variables = jax.eval_shape(_init_fn(model), jax.random.PRNGKey(0))
  opt_state = jax.eval_shape(tx.init, variables["params"])
  state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=variables["params"],
                     buffers=variables["buffers"], opt_state=opt_state)
  return sharding.abstract_replicated(state, mesh)


def create_state(variables: Any, tx: optax.GradientTransformation, mesh, step: int
                 ) -> TrainState:
  """A TrainState on `mesh` from variables (numpy or arrays) with a fresh optimizer state."""
  repl = sharding.replicated(mesh)
  variables = jax.tree_util.tree_map(lambda x: _replicate(x, repl), variables)
  opt_abstract = jax.eval_shape(tx.init, variables["params"])
  opt_state = jax.jit(tx.init, out_shardings=jax.tree_util.tree_map(lambda _: repl,
                                                                    opt_abstract))(
                                                                        variables["params"])
  return TrainState(step=_replicate(np.int32(step), repl), params=variables["params"],
                    buffers=variables["buffers"], opt_state=opt_state)


def _replicate(x: Any, repl) -> jax.Array:
  """A replicated global array from a host value (the same on every process) or an array."""
  if isinstance(x, jax.Array):
    return x if x.sharding == repl else jax.device_put(x, repl)
  value = np.asarray(x)
  return jax.make_array_from_callback(value.shape, repl, lambda index: value[index])


def loss_groups(config, mesh) -> int:
  """Normalisation groups of the losses (`rap_jax.modeling.losses.group_normalize`): one per
  device of the mesh for config.train.loss_normalization 'per_device' (the original: each GPU
  normalises by its own counts, DDP averages the gradients), 1 for 'global' (whole batch)."""
  mode = config.train.get("loss_normalization", "per_device")
  if mode not in config_checks.LOSS_NORMALIZATIONS:
    raise ValueError(f"train.loss_normalization={mode!r}: must be one of "
                     f"{config_checks.LOSS_NORMALIZATIONS}")
  return int(mesh.devices.size) if mode == "per_device" else 1


def make_train_step(config, model: nn.Module, tx: optax.GradientTransformation, mesh
                    ) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
  """The jitted update: (state, global batch) -> (state, metrics); `state` is donated.

  metrics: every loss, `loss` (their float32 sum, the original's order), `lr` (of this update),
  `grad_norm` (trainable params), `finite` (loss and gradients finite) and the `num_*` counts of
  `aux` (sampled anchors/ROIs, positives, relation pairs), all replicated scalars.
  """
  sampling_key = stream_key(config.seed, "sampling")
  precision = config.model.get("matmul_precision", "highest")
  labels = optim.label_params(jax.eval_shape(_init_fn(model), jax.random.PRNGKey(0))["params"],
                              config)
  groups = loss_groups(config, mesh)

  def step_fn(state: TrainState, batch: Any) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(sampling_key, state.step)

    def loss_fn(params):
      with jax.default_matmul_precision(precision):
        losses, aux = model.apply({"params": params, "buffers": state.buffers}, batch, rng,
                                  method=type(model).losses, loss_groups=groups)
      return loss_lib.total_loss(losses), (losses, aux)

    (total, (losses, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    trained = jax.tree_util.tree_map(
        lambda g, label: g if label != optim.FROZEN else jnp.zeros((), g.dtype), grads, labels)
    grad_norm = optax.tree.norm(trained)
    metrics = dict(losses, loss=total, grad_norm=grad_norm,
                   lr=optim.current_lr(config, state.opt_state),
                   finite=jnp.isfinite(total) & jnp.isfinite(grad_norm))
    metrics.update({k: v for k, v in aux.items() if k.startswith("num_")})
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics

  state_shardings = jax.tree_util.tree_map(lambda x: x.sharding,
                                           abstract_state(model, tx, mesh))
  return jax.jit(step_fn, in_shardings=(state_shardings, sharding.batch_sharded(mesh)),
                 out_shardings=(state_shardings, sharding.replicated(mesh)),
                 donate_argnums=(0,))


# ------------------------------------------------------------------ data


def _seeded(config, seed: int) -> ml_collections.ConfigDict:
  """The parts of `config` the train pipeline reads, with another seed."""
  return ml_collections.ConfigDict({"seed": seed, "data": config.data, "input": config.input,
                                    "train": config.train})


def train_batches(config, builder, mesh) -> Callable[[int], Iterator[Any]]:
  """segment start step -> iterator of global batches for the steps that follow it."""
  from rap_jax.data import input_pipeline  # pylint: disable=import-outside-toplevel

  def batches(start: int) -> Iterator[Any]:
    ds = input_pipeline.create_train_dataset(_seeded(config, data_seed(config.seed, start)),
                                             builder)
    with input_pipeline.as_numpy(ds) as it:
      for local in it:
        yield sharding.global_batch(local, mesh)
  return batches


# ------------------------------------------------------------------ loop


@dataclasses.dataclass
class LoopSettings:
  """What the loop needs besides the state: where to stop, save and log."""
  stage: int                     # 1 | 2 (train.stage)
  stage_index: int               # position in the run's stages
  max_iter: int
  checkpoint_period: int
  log_every: int
  global_batch_size: int
  seed: int
  workdir: str

  @classmethod
  def from_config(cls, config, stage_index: int, workdir: str) -> "LoopSettings":
    t = config.train
    return cls(stage=int(t.stage), stage_index=stage_index, max_iter=int(t.max_iter),
               checkpoint_period=int(t.checkpoint_period), log_every=int(t.log_every),
               global_batch_size=int(t.global_batch_size), seed=int(config.seed),
               workdir=str(workdir))


def _nonfinite_message(step: int, metrics: Mapping[str, Any], manager) -> str:
  bad = [f"{k}={float(v)}" for k, v in metrics.items()
         if k.startswith("loss") and not math.isfinite(float(v))]
  if not math.isfinite(float(metrics["grad_norm"])):
    bad.append(f"grad_norm={float(metrics['grad_norm'])}")
  last = manager.latest_step() if manager is not None else None
  where = (f"the last checkpoint ({manager.directory / str(last)}) is intact"
           if last is not None else "no checkpoint was written")
  return f"step {step}: non-finite {', '.join(bad)}; training stopped, {where}"


class _MetricsWriter:
  """Means over windows of `log_every` steps -> absl log + <workdir>/train_metrics.jsonl."""

  def __init__(self, settings: LoopSettings, start: int):
    self.settings = settings
    self.window: list[dict] = []
    self.t0 = time.perf_counter()
    self.path = pathlib.Path(settings.workdir) / METRICS_FILE
    self.first: dict | None = None
    self.last: dict | None = None
    # One progress bar per stage on the console (process 0): loss, lr, images/s.
    self.bar = tqdm.tqdm(total=settings.max_iter, initial=start, unit="it", dynamic_ncols=True,
                         desc=f"stage {settings.stage}", disable=jax.process_index() != 0)

  def add(self, step: int, metrics: Mapping[str, Any]) -> None:
    self.window.append({k: float(v) for k, v in metrics.items()})
    self.bar.update(step - self.bar.n)
    if step % self.settings.log_every == 0 or step == self.settings.max_iter:
      self.flush(step)

  def close(self) -> None:
    self.bar.close()

  def flush(self, step: int) -> None:
    now = time.perf_counter()
    n = len(self.window)
    record = {k: float(np.mean([m[k] for m in self.window])) for k in self.window[0]}
    record.pop("finite", None)
    # the first window holds the compilation: no throughput for it
    rate = n * self.settings.global_batch_size / (now - self.t0) if self.first else None
    record = dict(stage=self.settings.stage, step=step, **record, images_per_s=rate,
                  time=time.time())
    self.window, self.t0 = [], now
    self.first = self.first or record
    self.last = record
    losses = " ".join(f"{k}={v:.4f}" for k, v in record.items() if k.startswith("loss_"))
    self.bar.set_postfix_str(f"loss {record['loss']:.3f} lr {record['lr']:.3g}"
                             + (f" {rate:.1f} img/s" if rate else ""), refresh=False)
    logging.info("stage %d step %d/%d: loss %.4f (%s) lr %.6g grad_norm %.3g%s",
                 self.settings.stage, step, self.settings.max_iter, record["loss"], losses,
                 record["lr"], record["grad_norm"],
                 f", {rate:.2f} images/s" if rate else "")
    if jax.process_index() == 0:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")


def train_loop(state: TrainState, step_fn: Callable, batches: Callable[[int], Iterator[Any]],
               settings: LoopSettings, manager) -> tuple[TrainState, dict]:
  """Runs steps `state.step + 1 .. settings.max_iter`; returns (state, {'first', 'last'} records).

  `batches(s)` starts the data stream of the steps after s; it is called at the first step and at
  every checkpoint boundary (exact resume, see the module docstring). Checkpoints are saved at
  multiples of `checkpoint_period` and at `max_iter`, after checking that no step up to them
  produced a non-finite loss (metrics are checked one step late to keep the device busy).
  """
  start = int(sharding.host_local(state.step))
  writer = _MetricsWriter(settings, start)
  pending: tuple[int, Any] | None = None  # (step, device metrics) not yet checked
  it: Iterator[Any] | None = None

  def check(step: int, metrics: Any) -> None:
    host = sharding.host_local(metrics)
    if not bool(host["finite"]):
      if manager is not None:
        manager.wait_until_finished()
      raise NonFiniteLossError(_nonfinite_message(step, host, manager))
    writer.add(step, host)

  try:
    for step in range(start + 1, settings.max_iter + 1):
      if it is None or (step - 1) % settings.checkpoint_period == 0:
        if it is not None:
          it.close()
        it = batches(step - 1)
      state, metrics = step_fn(state, next(it))
      if pending is not None:
        check(*pending)
      pending = (step, metrics)
      if step % settings.checkpoint_period == 0 or step == settings.max_iter:
        check(*pending)
        pending = None
        if manager is not None:
          meta = dict(stage=settings.stage, stage_index=settings.stage_index,
                      max_iter=settings.max_iter, seed=settings.seed,
                      data_seed=data_seed(settings.seed, step),
                      losses={k: v for k, v in writer.last.items() if k.startswith("loss")}
                      if writer.last else {})
          checkpoint.save_train_checkpoint(manager, step, state.variables, state.opt_state, meta)
    if pending is not None:
      check(*pending)
  finally:
    writer.close()
    if it is not None:
      it.close()
    if manager is not None:
      manager.wait_until_finished()
  return state, {"first": writer.first, "last": writer.last}


# ------------------------------------------------------------------ one stage


def _initial_variables(config, model, mesh, init_dir: str | None, stage_index: int) -> Any:
  """Fresh init, or `init_dir` merged into it (allowed fresh subtrees logged), on `mesh`."""
  stage = int(config.train.stage)
  variables = init_variables(model, stream_key(config.seed, "params"), mesh)
  if not init_dir:
    if stage == 2:
      raise ValueError(
          "train.stage=2 (relation finetune) starts from a stage-1 model: set "
          "--config.init_checkpoint=<the stage-1 workdir or checkpoint> (SPEC §6.2)")
    logging.warning("Stage 1 from scratch: every weight freshly initialised (the original starts "
                    "from ImageNet weights, not available here; set config.init_checkpoint to a "
                    "converted checkpoint to start from one).")
    return variables
  directory = checkpoint.resolve_checkpoint(init_dir)
  allow = FRESH_STAGE2 if stage == 2 else FRESH_STAGE1
  # merge_variables logs each allowed subtree the checkpoint lacks ("... freshly initialised"),
  # which the original does silently (SPEC §9.1, §11.10); anything else missing is an error.
  logging.info("Stage %d (entry %d of the run) initialised from %s; may stay freshly "
               "initialised: %s", stage, stage_index + 1, directory, ", ".join(allow))
  merged = checkpoint.merge_variables(checkpoint.load_variables(directory),
                                      sharding.host_local(variables), allow_fresh=allow)
  repl = sharding.replicated(mesh)
  return jax.tree_util.tree_map(lambda x: _replicate(x, repl), merged)


def train_stage(config, workdir: str, mesh, *, stage_index: int, manager, builder,
                init_dir: str | None = None) -> TrainState | None:
  """Trains one stage (resuming it if the workdir holds its checkpoints); returns the state.

  Returns None if the stage had finished before (its last checkpoint holds the result).
  """
  t = config.train
  model = build_model(config)
  tx = optim.make_optimizer(config)
  settings = LoopSettings.from_config(config, stage_index, workdir)

  latest = manager.latest_step()
  meta = checkpoint.train_checkpoint_meta(manager, latest) if latest is not None else None
  if meta is not None and meta.get("stage_index", 0) > stage_index:
    return None
  resume = meta is not None and meta.get("stage_index", 0) == stage_index
  if resume and meta.get("stage") != int(t.stage):
    raise ValueError(f"{checkpoint.checkpoints_dir(workdir)} holds a train.stage="
                     f"{meta.get('stage')} run (step {latest}), this config is train.stage="
                     f"{t.stage}: use a new workdir (and --config.init_checkpoint=<that run>)")
  if resume and latest >= settings.max_iter:
    logging.info("Stage %d already finished at step %d (%s)", t.stage, latest,
                 checkpoint.checkpoints_dir(workdir) / str(latest))
    return None

  if resume:
    start = latest
    target = abstract_state(model, tx, mesh)
    variables, opt_state, _ = checkpoint.restore_train_checkpoint(
        manager, latest, target.variables, target.opt_state)
    state = TrainState(step=_replicate(np.int32(latest), sharding.replicated(mesh)),
                       params=variables["params"], buffers=variables["buffers"],
                       opt_state=opt_state)
    logging.info("Resuming stage %d from step %d (%s)", t.stage, latest,
                 checkpoint.checkpoints_dir(workdir) / str(latest))
  else:
    start = int(t.start_iter)
    variables = _initial_variables(config, model, mesh, init_dir, stage_index)
    state = create_state(variables, tx, mesh, step=start)
  logging.info("Stage %d: steps %d..%d, global batch %d on %d devices, lr %.6g (bias %.6g), "
               "trained %d of %d param tensors", t.stage, start + 1, t.max_iter,
               t.global_batch_size, mesh.devices.size, optim.first_update_lr(t),
               optim.first_update_lr(t, optim.BIAS),
               sum(v is not None for v in optim.describe(state.params, config).values()),
               len(jax.tree_util.tree_leaves(state.params)))

  step_fn = make_train_step(config, model, tx, mesh)
  state, records = train_loop(state, step_fn, train_batches(config, builder, mesh), settings,
                              manager)
  if records["first"] and records["last"]:
    logging.info("Stage %d done: mean loss %.4f (window ending at step %d) -> %.4f (step %d)",
                 t.stage, records["first"]["loss"], records["first"]["step"],
                 records["last"]["loss"], records["last"]["step"])
  return state


# ------------------------------------------------------------------ the run


def train(config, workdir: str) -> tuple[ml_collections.ConfigDict, Any]:
  """Trains every stage of `config` in `workdir`; returns (last stage config, host variables)."""
  mesh = sharding.make_mesh()
  stages = stage_configs(config)
  for c in stages:
    sharding.check_batch_size(int(c.train.global_batch_size), mesh)
  logging.info("Training %d stage(s) %s on a %s mesh of %d devices (%d processes)",
               len(stages), [int(c.train.stage) for c in stages], sharding.DATA_AXIS,
               mesh.devices.size, jax.process_count())
  os.makedirs(workdir, exist_ok=True)
  manager = checkpoint.train_checkpoint_manager(
      workdir, keep_steps=[int(c.train.max_iter) for c in stages])
  builder = None
  state = None
  try:
    for i, stage in enumerate(stages):
      init_dir = str(stage.init_checkpoint or "")
      if i > 0 and not init_dir:  # the previous stage's model_final
        init_dir = str(checkpoint.checkpoints_dir(workdir) / str(stages[i - 1].train.max_iter))
      if builder is None:
        from rap_jax.data import coco  # pylint: disable=import-outside-toplevel
        builder = coco.get_builder(stage.data)
      state = train_stage(stage, workdir, mesh, stage_index=i, manager=manager, builder=builder,
                          init_dir=init_dir)
  finally:
    manager.wait_until_finished()
    manager.close()
  if state is None:  # everything had finished before: the newest checkpoint is the result
    variables = checkpoint.load_variables(checkpoint.latest_checkpoint(workdir))
  else:
    variables = sharding.host_local(state.variables)
  return stages[-1], variables


def write_curves(workdir: str) -> None:
  """<workdir>/curves.png from train_metrics.jsonl (process 0; a plotting failure only warns)."""
  metrics = pathlib.Path(workdir) / METRICS_FILE
  if jax.process_index() != 0 or not metrics.is_file():
    return
  from rap_jax import console  # pylint: disable=import-outside-toplevel
  try:
    out = console.plot_curves(metrics, pathlib.Path(workdir) / console.CURVES_FILE)
    logging.info("Training curves: %s", out)
  except (ImportError, ValueError, OSError) as e:
    logging.warning("could not draw the training curves from %s: %s", metrics, e)


def train_and_evaluate(config, workdir: str) -> dict | None:
  """Train mode of rap_jax.main: every stage, then evaluation of the final weights."""
  final_config, variables = train(config, workdir)
  write_curves(workdir)
  modes = tuple(config.modes)
  if "eval" in modes and "train" in modes and modes.index("eval") > modes.index("train"):
    logging.info("Evaluation runs next as its own mode (config.modes=%s)", modes)
    return None
  if importlib.util.find_spec("rap_jax.evaluate") is None:
    logging.warning("Evaluation after training skipped: rap_jax.evaluate is not available")
    return None
  from rap_jax import evaluate  # pylint: disable=import-outside-toplevel
  logging.info("Evaluating the trained model on %s", final_config.data.eval_split)
  return evaluate.run(final_config, workdir, variables=variables)
