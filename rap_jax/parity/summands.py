"""Gradients together with the magnitude of the terms of their final float32 sums.

Every parameter gradient is, at its last step, a sum: a conv/dense kernel gradient sums
x_k * dy_k over all positions k where the kernel was applied, a bias gradient sums dy_k, a
GroupNorm scale gradient sums xhat_k * dy_k, a parameter used by several heads adds their
contributions. For g_j = sum_k a_jk this module returns, besides g_j,

  S_j = sum_k |a_jk|   (the magnitude of the summands; S_j >= |g_j|, S_j >> |g_j| when the sum
                        cancels, e.g. a bias before a GroupNorm or relation_val.bias, whose
                        terms cancel exactly)
  Q_j = sum_k a_jk^2   (so that n_j = S_j^2 / Q_j is the effective number of terms: N for N
                        terms of equal size, 1 when one term dominates)

computed by the same program as the gradient: the backward jaxpr is evaluated as is, and along
the final "chain" of each gradient (from the gradient output back through layout ops - reshape,
transpose, broadcast, add of several uses, scaling by constants - to the reduction that forms it:
reduce_sum, dot_general, conv_general_dilated, scatter-add, ...) two shadow values are carried in
which that reduction is evaluated on the absolute values (S) and on the squares (Q) of its
operands (the terms of a dot / conv are products, |x y| = |x||y|, (x y)^2 = x^2 y^2; later adds /
subtractions of the chain add magnitudes, a constant factor c scales them by |c| and c^2).

Only the LAST reduction is made absolute on purpose: the fully absolute adjoint (|J|^T at every
layer) grows like sqrt(fan-in)^depth and is no usable scale for a deep network (measured: up to
1e36 x |g| at layer2 of the small R-50).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.extend import core as jcore

# Ops that move, select, add or scale values of the chain: the shadow follows them.
_LAYOUT = {"add", "add_any", "sub", "neg", "mul", "div", "transpose", "reshape",
           "convert_element_type", "squeeze", "expand_dims", "broadcast_in_dim", "copy", "copy_p",
           "pad", "slice", "concatenate", "rev", "dynamic_slice", "dynamic_update_slice",
           "select_n", "gather", "reduce_precision", "split"}
# Reductions: the summands of the final sum; the shadow is the op on absolute operands.
# {primitive: indices of the operands that hold summands (the others index / select)}
_REDUCTIONS = {"reduce_sum": (0,), "dot_general": (0, 1), "conv_general_dilated": (0, 1),
               "scatter-add": (0, 2), "scatter_add": (0, 2), "cumsum": (0,),
               "reduce_window_sum": (0,), "select_and_scatter_add": (0,)}
_CALLS = ("custom_jvp_call", "custom_vjp_call")


def _read(env, v):
  return v.val if isinstance(v, jcore.Literal) else env[v]


def _is_var(v) -> bool:
  return not isinstance(v, jcore.Literal)


def _trivial_reduction(eqn) -> bool:
  """A reduce_sum over axes of total size 1 (e.g. after a reshape): a layout op."""
  if eqn.primitive.name != "reduce_sum":
    return False
  shape = eqn.invars[0].aval.shape
  return all(shape[a] == 1 for a in eqn.params["axes"])


def _bind(eqn, invals):
  if eqn.primitive.name in _CALLS:
    sub = eqn.params.get("call_jaxpr", eqn.params.get("fun_jaxpr"))
    return list(jcore.jaxpr_as_fun(sub)(*invals))
  out = eqn.primitive.bind(*invals, **eqn.params)
  return list(out) if eqn.primitive.multiple_results else [out]


def _shadow_eval(jaxpr: jcore.Jaxpr, consts, args, linear_in) -> tuple[list, list]:
  """Evaluates `jaxpr`; returns (outputs, shadows of the linear outputs or None)."""
  linear = {v for v, lin in zip(jaxpr.invars, linear_in) if lin}
  for eqn in jaxpr.eqns:  # which values depend on the cotangent
    if any(_is_var(v) and v in linear for v in eqn.invars):
      linear.update(v for v in eqn.outvars if not isinstance(v, jcore.DropVar))
  chain, heads = {v for v in jaxpr.outvars if _is_var(v) and v in linear}, set()
  for i in range(len(jaxpr.eqns) - 1, -1, -1):  # mark the final chains, back to their reduction
    eqn = jaxpr.eqns[i]
    if not any(v in chain for v in eqn.outvars if not isinstance(v, jcore.DropVar)):
      continue
    if eqn.primitive.name in _LAYOUT or _trivial_reduction(eqn):
      chain.update(v for v in eqn.invars if _is_var(v) and v in linear)
    elif eqn.primitive.name in _REDUCTIONS:
      heads.add(i)
    else:
      raise NotImplementedError(f"summand magnitudes: {eqn.primitive.name!r} ends a gradient")

  env, shadow = {}, {}  # shadow: var -> (S, Q)
  for v, x in zip(jaxpr.constvars, consts):
    env[v] = x
  for v, x in zip(jaxpr.invars, args):
    env[v] = x
  for i, eqn in enumerate(jaxpr.eqns):
    invals = [_read(env, v) for v in eqn.invars]
    outs = _bind(eqn, invals)
    for v, x in zip(eqn.outvars, outs):
      if not isinstance(v, jcore.DropVar):
        env[v] = x
    out = eqn.outvars[0]
    if isinstance(out, jcore.DropVar) or out not in chain:
      continue
    name = eqn.primitive.name
    if i in heads:  # the final sum: the same reduction of |terms| and of terms^2
      summands = _REDUCTIONS[name]
      shadow[out] = tuple(
          _bind(eqn, [f(x) if k in summands else x for k, x in enumerate(invals)])[0]
          for f in (jnp.abs, jnp.square))
      continue
    lin = [_is_var(v) and v in linear for v in eqn.invars]
    # per operand: the shadows of a chain value; (|x|, x^2) of a constant; None for the
    # operands that are not values (indices, predicates, sizes)
    def parts(k, values=True):
      v, x = eqn.invars[k], invals[k]
      if lin[k]:
        return shadow.get(v, (jnp.abs(x), jnp.square(x)))
      return (jnp.abs(x), jnp.square(x)) if values else (x, x)
    if name in ("add", "add_any", "sub"):
      (sa, qa), (sb, qb) = parts(0), parts(1)
      shadow[out] = (sa + sb, qa + qb)
    elif name == "neg":
      shadow[out] = parts(0)
    elif name in ("mul", "div"):
      (sa, qa), (sb, qb) = parts(0), parts(1)
      shadow[out] = (sa * sb, qa * qb) if name == "mul" else (sa / sb, qa / qb)
    elif name in ("select_n", "concatenate", "dynamic_update_slice"):
      values = {"select_n": lambda k: k > 0, "concatenate": lambda k: True,
                "dynamic_update_slice": lambda k: k < 2}[name]
      ops = [parts(k, values(k)) for k in range(len(invals))]
      shadow[out] = tuple(eqn.primitive.bind(*[o[t] for o in ops], **eqn.params)
                          for t in (0, 1))
    elif name == "split":
      raise NotImplementedError("summand magnitudes: split on a gradient chain")
    else:  # one chain operand moved around (reshape, transpose, pad with 0, gather, ...)
      ops = [parts(k, False) for k in range(len(invals))]
      shadow[out] = tuple(_bind(eqn, [o[t] for o in ops])[0] for t in (0, 1))
  outs = [_read(env, v) for v in jaxpr.outvars]
  shadows = [shadow[v] if _is_var(v) and v in shadow else None for v in jaxpr.outvars]
  return outs, shadows


def value_grad_and_summands(fun: Callable[..., tuple[jax.Array, Any]], params: Any, *args
                            ) -> tuple[tuple[jax.Array, Any], Any, Any, Any]:
  """((loss, aux), grads, S, Q) of `fun(params, *args) -> (loss, aux)`.

  Traceable (call it under jax.jit). `grads` equals jax.grad's; S and Q (module docstring) have
  the structure of `params`.
  """
  def program(p, ct, *a):
    loss, vjp, aux = jax.vjp(lambda q: fun(q, *a), p, has_aux=True)
    return loss, aux, vjp(ct)[0]

  ct = jnp.ones((), jnp.float32)
  with jax.disable_jit():  # inline every nested jit: one flat jaxpr
    closed, shape = jax.make_jaxpr(program, return_shape=True)(params, ct, *args)
  flat_args = jax.tree_util.tree_leaves((params, ct, args))
  linear_in = [False] * len(flat_args)
  linear_in[len(jax.tree_util.tree_leaves(params))] = True
  outs, shadows = _shadow_eval(closed.jaxpr, closed.consts, flat_args, linear_in)
  loss, aux, grads = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shape), outs)
  n_grads = len(jax.tree_util.tree_leaves(params))
  grad_shadows = shadows[len(shadows) - n_grads:]
  grad_leaves = jax.tree_util.tree_leaves(grads)
  treedef = jax.tree_util.tree_structure(grads)
  shadows = [(jnp.abs(g), jnp.square(g)) if s is None else s
             for g, s in zip(grad_leaves, grad_shadows)]
  return ((loss, aux), grads, jax.tree_util.tree_unflatten(treedef, [s for s, _ in shadows]),
          jax.tree_util.tree_unflatten(treedef, [q for _, q in shadows]))
