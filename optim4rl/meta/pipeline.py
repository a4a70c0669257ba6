"""Pipeline training (Section 5.1), independent of the agent: units reset at staggered offsets,
the meta-gradient averaged over units (optionally split over devices), its rescaling and the
meta-optimizer."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from optim4rl.meta.config import MetaConfig
from optim4rl.meta.tasks import Task


def reset_offsets(units: int, interval: int):
  """r_i evenly spaced over [0, m - 1] (Section 5.1)."""
  return jnp.floor(jnp.linspace(0, interval - 1, units)).astype(jnp.int32)


def meta_step(task: Task, cfg: MetaConfig, mesh: Mesh | None = None):
  """`step(meta, units, t, key) -> (meta-gradient, units, (return sum, episodes))` for `task`.

  Units due at t (pipeline offsets over cfg.reset_interval) are replaced by fresh ones made
  from `key`; each unit takes one `task.unit_loss` iteration; the meta-gradient is the mean
  over cfg.units, rescaled per cfg.max_norm. With a `mesh` (one axis "units"), each device
  runs its block of units and the partial sums are added across devices.
  """
  n = cfg.units
  offsets = reset_offsets(n, cfg.reset_interval)

  def block(meta, units, fresh, due):
    units = jax.tree.map(
        lambda f, o: jnp.where(due.reshape(due.shape + (1,) * (o.ndim - 1)), f, o), fresh, units)
    grads, (units, (ret, eps)) = jax.vmap(jax.grad(task.unit_loss, has_aux=True), (None, 0))(
        meta, units)
    return (jax.tree.map(lambda g: jnp.sum(g, axis=0), grads), units,
            jnp.stack([ret.sum(), eps.sum()]))

  def summed_over_devices(*args):
    grads, units, stats = block(*args)
    return jax.lax.psum(grads, "units"), units, jax.lax.psum(stats, "units")

  run = block
  if mesh is not None:
    if n % mesh.size:
      raise ValueError(f"{n} units do not split evenly over {mesh.size} devices")
    run = jax.shard_map(summed_over_devices, mesh=mesh,
                        in_specs=(P(), P("units"), P("units"), P("units")),
                        out_specs=(P(), P("units"), P()),
                        check_vma=False)  # Brax's solver loops fail the vma check

  def step(meta, units, t, key):
    due = (t % cfg.reset_interval) == offsets
    grads, units, stats = run(meta, units, task.fresh_units(jax.random.split(key, n)), due)
    grads = jax.tree.map(lambda g: g / n, grads)
    return rescale(grads, cfg.max_norm), units, (stats[0], stats[1])

  return step


def place_units(units, mesh: Mesh | None):
  """Units laid out split over `mesh`'s devices (unchanged without a mesh)."""
  return units if mesh is None else jax.device_put(units, NamedSharding(mesh, P("units")))


def replicate(tree, mesh: Mesh | None):
  """`tree` replicated on every device of `mesh` (unchanged without a mesh)."""
  return tree if mesh is None else jax.device_put(tree, NamedSharding(mesh, P()))


def units_mesh(devices=None) -> Mesh:
  """A one-axis mesh ("units") over `devices` (default: all)."""
  return Mesh(np.asarray(devices if devices is not None else jax.devices()), ("units",))


def rescale(grads, max_norm: float):
  """The paper's max-norm option: a task's meta-gradient rescaled to `max_norm` (if > 0)."""
  if max_norm <= 0:
    return grads
  norm = global_norm(grads)
  return jax.tree.map(lambda g: g * (max_norm / jnp.maximum(norm, 1e-12)), grads)


def global_norm(tree):
  """sqrt of the sum of squares of all of `tree`'s entries."""
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def meta_optimizer(cfg: MetaConfig) -> optax.GradientTransformation:
  """Adam on the meta-parameters, after clipping the meta-gradient's global norm."""
  parts = [optax.clip_by_global_norm(cfg.meta_grad_clip)] if cfg.meta_grad_clip > 0 else []
  return optax.chain(*parts, optax.adam(cfg.meta_lr))
