"""The original's optimizer as an optax chain (SPEC §6.1, §6.2, §11.16, §11.24).

maskrcnn-benchmark's `make_optimizer` builds one SGD param group per parameter:

  weights (any name without "bias"): lr = base_lr,                  weight decay = weight_decay
  biases  (name contains "bias"):    lr = base_lr * bias_lr_factor, weight decay = weight_decay_bias

GroupNorm weights (our leaf `scale`) are weights: they DO get weight decay. The FrozenBatchNorm
constants are buffers (variables['buffers']), never seen by the optimizer. Parameters with
`requires_grad=False` are not in the optimizer at all; here they are labelled 'frozen' and get a
zero update and no optimizer state:

  stage 1: MODEL.BACKBONE.FREEZE_CONV_BODY_AT = k freezes the stem (k >= 1) and layer1..layer(k-1)
           (`ResNet._freeze_backbone`); every config uses k = 2 (stem + layer1);
  stage 2: SOLVER.FINETUNE: only parameters under `roi_heads/relation` are trained (the RAP or
           OCFusion head, SPEC §11.24); everything else keeps its stage-1 value.

PyTorch SGD (momentum m, no dampening, no Nesterov), per parameter p with gradient g:

  d = g + wd * p;  buf = d (first step) else m * buf + d;  p <- p - lr * buf

which is `add_decayed_weights(wd) -> trace(m) -> scale_by_schedule(-lr)` (optax's trace starts
from zeros, so its first value is exactly d).

LR: `WarmupMultiStepLR` at `last_epoch = e`:
  lr(e) = base * warm(e) * gamma ** bisect_right(steps, e),
  warm(e) = warmup_factor * (1 - e / warmup_iters) + e / warmup_iters for e < warmup_iters, else 1.
`engine/trainer.py` calls `scheduler.step()` BEFORE each update, so the k-th update of a run
(1-based) uses lr(k): the first stage-1 update uses 0.02 * 0.334667, never 0.02 / 3. The
scheduler starts at 0 in every run of the original: a stage-2 finetune (which continues the
iteration count at 150000) does not restore it, so its k-th update uses lr(k), constant 0.002
(the step at 155000 is never reached, SPEC §11.16). Here the schedule is driven by optax's own
update count, which restarts with the optimizer state of each stage and is restored on resume
(the original restores its scheduler when resuming stage 1).
"""
from __future__ import annotations

import bisect
import re
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

WEIGHT, BIAS, FROZEN = "weight", "bias", "frozen"
# Stage 2 (SOLVER.FINETUNE) trains exactly this subtree of params (SPEC §6.2).
RELATION_PARAMS = "roi_heads/relation"


def lr_at(last_epoch: int, *, base_lr: float, steps: Sequence[int], gamma: float,
          warmup_factor: float, warmup_iters: int, warmup_method: str = "linear") -> float:
  """`WarmupMultiStepLR.get_lr()` at `last_epoch`, in Python float64 with the original's order."""
  factor = 1.0
  if last_epoch < warmup_iters:
    if warmup_method == "constant":
      factor = warmup_factor
    elif warmup_method == "linear":
      alpha = float(last_epoch) / warmup_iters
      factor = warmup_factor * (1 - alpha) + alpha
    else:
      raise ValueError(f"unknown warmup method {warmup_method!r}")
  return base_lr * factor * gamma ** bisect.bisect_right(list(steps), last_epoch)


def _lr_table(**kwargs) -> tuple[np.ndarray, np.ndarray]:
  """float32 roundings of the float64 lr: (warmup[e] for e < warmup_iters, decayed[n] after).

  Tabulating the original's float64 values keeps the jitted schedule bit-equal to
  float32(lr_at(e)) (a float32 evaluation of the formula can be 1 ulp off, enough to change the
  rounding of half of the first update's parameters).
  """
  warmup = [lr_at(e, **kwargs) for e in range(int(kwargs["warmup_iters"]))]
  steps = tuple(kwargs["steps"])
  after = [kwargs["base_lr"] * 1.0 * kwargs["gamma"] ** n for n in range(len(steps) + 1)]
  return np.asarray(warmup or [0.0], np.float32), np.asarray(after, np.float32)


def schedule(train_config, group: str = WEIGHT) -> Callable[[jax.Array], jax.Array]:
  """optax schedule of one group: `count` updates already done -> lr of the next, lr(count + 1).

  The value is float32(lr_at(count + 1)) exactly (see `_lr_table`).
  """
  base = float(train_config.base_lr)
  if group == BIAS:
    base *= float(train_config.bias_lr_factor)
  steps = tuple(int(s) for s in train_config.steps)
  warmup_iters = int(train_config.warmup_iters)
  warmup, after = _lr_table(base_lr=base, steps=steps, gamma=float(train_config.gamma),
                            warmup_factor=float(train_config.warmup_factor),
                            warmup_iters=warmup_iters)

  def lr(count: jax.Array) -> jax.Array:
    e = jnp.asarray(count, jnp.int32) + 1  # the trainer steps the scheduler before the update
    # bisect_right(steps, e) = number of milestones <= e
    passed = jnp.sum(e >= jnp.asarray(steps, jnp.int32)) if steps else jnp.int32(0)
    decayed = jnp.asarray(after)[passed]
    if not warmup_iters:
      return decayed
    return jnp.where(e < warmup_iters, jnp.asarray(warmup)[jnp.clip(e, 0, warmup_iters - 1)],
                     decayed)
  return lr


def first_update_lr(train_config, group: str = WEIGHT) -> float:
  """The float64 lr of a stage's first update (what the original logs in its param groups)."""
  base = float(train_config.base_lr)
  if group == BIAS:
    base *= float(train_config.bias_lr_factor)
  return lr_at(1, base_lr=base, steps=tuple(train_config.steps), gamma=float(train_config.gamma),
               warmup_factor=float(train_config.warmup_factor),
               warmup_iters=int(train_config.warmup_iters))


# ------------------------------------------------------------------ which parameter gets what


def frozen_patterns(config) -> tuple[str, ...]:
  """Regexes (full match on '/'-joined param paths) of the parameters that are not trained."""
  if int(config.train.stage) == 2:  # SOLVER.FINETUNE: everything but the relation head
    return (rf"(?!{RELATION_PARAMS}/).*",)
  freeze_at = int(config.model.backbone.freeze_at)
  parts = (["stem"] if freeze_at >= 1 else []) + [f"layer{i}" for i in range(1, freeze_at)]
  return tuple(rf"backbone/body/{p}/.*" for p in parts)


def _path(key_path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in key_path)


def label_params(params: Mapping[str, Any], config) -> Any:
  """Tree like `params` of 'frozen' | 'bias' | 'weight' (the rules of the module docstring)."""
  frozen = [re.compile(p) for p in frozen_patterns(config)]

  def label(key_path, _):
    path = _path(key_path)
    if any(p.fullmatch(path) for p in frozen):
      return FROZEN
    return BIAS if path.rsplit("/", 1)[-1] == "bias" else WEIGHT
  return jax.tree_util.tree_map_with_path(label, params)


def _sgd(lr: Callable[[jax.Array], jax.Array], weight_decay: float,
         momentum: float) -> optax.GradientTransformation:
  """PyTorch SGD of one param group: d = g + wd p; buf = m buf + d; update = -lr(count) buf."""
  parts = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
  parts += [optax.trace(decay=momentum, nesterov=False),
            optax.scale_by_schedule(lambda count: -lr(count))]
  return optax.chain(*parts)


def make_optimizer(config) -> optax.GradientTransformation:
  """The optax transformation of `config.train` for the model's params (labels from the tree)."""
  t = config.train
  return optax.multi_transform(
      {WEIGHT: _sgd(schedule(t, WEIGHT), float(t.weight_decay), float(t.momentum)),
       BIAS: _sgd(schedule(t, BIAS), float(t.weight_decay_bias), float(t.momentum)),
       FROZEN: optax.set_to_zero()},
      lambda params: label_params(params, config))


def current_lr(config, opt_state: Any) -> jax.Array:
  """lr of the weight group for the NEXT update of `opt_state` (for logging)."""
  counts = [s.count for s in jax.tree_util.tree_leaves(
      opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))
      if isinstance(s, optax.ScaleByScheduleState)]
  count = counts[0] if counts else jnp.zeros((), jnp.int32)
  return schedule(config.train, WEIGHT)(count)


def describe(params: Mapping[str, Any], config) -> dict[str, tuple[float, float] | None]:
  """{param path: (lr of the first update, weight decay)} in float64; None for frozen params."""
  t = config.train
  groups = {WEIGHT: (first_update_lr(t, WEIGHT), float(t.weight_decay)),
            BIAS: (first_update_lr(t, BIAS), float(t.weight_decay_bias)), FROZEN: None}
  labels = jax.tree_util.tree_flatten_with_path(label_params(params, config))[0]
  return {_path(k): groups[v] for k, v in labels}
