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


def meta_step(task: Task, cfg: MetaConfig, mesh: Mesh | None = None,
              unit_chunk: int | None = None):
  """`step(meta, units, t, key) -> (meta-gradient, units, (return sum, episodes))` for `task`.

  Units due at t (pipeline offsets over cfg.reset_interval) are replaced by fresh ones made
  from `key` (split into one key per unit); each unit takes one `task.unit_loss` iteration;
  the meta-gradient is the mean over cfg.units, rescaled per cfg.max_norm. With a `mesh` (one axis "units"), each device
  runs its block of units and the partial sums are added across devices. With `unit_chunk`,
  a device's units run `unit_chunk` at a time (a loop over chunks, updated in place, their
  meta-gradients summed): working memory is bounded by the chunk, not by the units; the
  result differs only by rounding (the order of the sum, XLA's numerics for another batch).
  """
  n = cfg.units
  offsets = reset_offsets(n, cfg.reset_interval)
  local = units_per_device(cfg, mesh)
  chunk = check_unit_chunk(unit_chunk, local)
  grad = unit_gradients(task)

  def run_units(meta, units, keys, due):
    """Sums over these units (the due ones first replaced by fresh ones from their keys)."""
    fresh = task.fresh_units(keys)
    units = jax.tree.map(
        lambda f, o: jnp.where(due.reshape(due.shape + (1,) * (o.ndim - 1)), f, o), fresh, units)
    grads, (units, (ret, eps)) = grad(meta, units)
    return (jax.tree.map(lambda g: jnp.sum(g, axis=0), grads), units,
            jnp.stack([ret.sum(), eps.sum()]).astype(jnp.float32))

  def block(meta, units, keys, due):
    if chunk == local:
      return run_units(meta, units, keys, due)

    def body(i, carry):  # chunk i read and written in place: no second copy of the units
      units, total = carry
      part = lambda x: jax.lax.dynamic_slice_in_dim(x, i * chunk, chunk)
      grads, new, stats = run_units(meta, jax.tree.map(part, units), part(keys), part(due))
      units = jax.tree.map(lambda x, y: jax.lax.dynamic_update_slice_in_dim(x, y, i * chunk, 0),
                           units, new)
      return units, jax.tree.map(jnp.add, total, (grads, stats))
    zeros = (jax.tree.map(jnp.zeros_like, meta), jnp.zeros(2, jnp.float32))
    units, (grads, stats) = jax.lax.fori_loop(0, local // chunk, body, (units, zeros))
    return grads, units, stats

  def summed_over_devices(*args):
    grads, units, stats = block(*args)
    return jax.lax.psum(grads, "units"), units, jax.lax.psum(stats, "units")

  run = block
  if mesh is not None:
    run = jax.shard_map(summed_over_devices, mesh=mesh,
                        in_specs=(P(), P("units"), P("units"), P("units")),
                        out_specs=(P(), P("units"), P()),
                        check_vma=False)  # Brax's solver loops fail the vma check

  def step(meta, units, t, key):
    due = (t % cfg.reset_interval) == offsets
    grads, units, stats = run(meta, units, jax.random.split(key, n), due)
    grads = jax.tree.map(lambda g: g / n, grads)
    return rescale(grads, cfg.max_norm), units, (stats[0], stats[1])

  return step


def units_per_device(cfg: MetaConfig, mesh: Mesh | None) -> int:
  """The units each device of `mesh` runs (all of them without a mesh)."""
  if mesh is None:
    return cfg.units
  if cfg.units % mesh.size:
    raise ValueError(f"{cfg.units} units do not split evenly over {mesh.size} devices")
  return cfg.units // mesh.size


def unit_gradients(task: Task):
  """`grad(meta, units) -> (per-unit meta-gradients, (units, (returns, episodes)))`."""
  return jax.vmap(jax.grad(task.unit_loss, has_aux=True), (None, 0))


def check_unit_chunk(unit_chunk: int | None, local: int) -> int:
  """The units run at once on a device with `local` units: `unit_chunk` (None: all of them),
  which must divide them."""
  if unit_chunk is None:
    return local
  if isinstance(unit_chunk, bool) or not isinstance(unit_chunk, int) or unit_chunk < 1:
    raise ValueError(f"the unit chunk must be an integer >= 1, got {unit_chunk!r}")
  if local % unit_chunk:
    raise ValueError(f"a unit chunk of {unit_chunk} does not divide the {local} units of a "
                     f"device")
  return unit_chunk


AUTO_ALL_UNITS = 64  # "auto" runs up to this many units of a device at once without measuring


def auto_unit_chunk(task: Task, meta, units, local: int, budget_bytes: float) -> int:
  """The units a device runs at once: all of them if `local` <= AUTO_ALL_UNITS, else
  `chunk_for_budget` of XLA's working memory per unit (temporaries and outputs of the
  compiled meta-gradient of a few units; one extra compilation)."""
  if local <= AUTO_ALL_UNITS:
    return local
  return chunk_for_budget(local, unit_working_bytes(task, meta, units, local), budget_bytes)


def unit_working_bytes(task: Task, meta, units, local: int) -> float:
  """XLA's working memory per unit of the meta-gradient, from a compilation for a few units."""
  probe = max(d for d in range(1, 9) if local % d == 0)
  sample = jax.tree.map(lambda x: x[:probe], units)
  memory = jax.jit(unit_gradients(task)).lower(meta, sample).compile().memory_analysis()
  return (memory.temp_size_in_bytes + memory.output_size_in_bytes) / probe


def chunk_for_budget(local: int, per_unit: float, budget_bytes: float) -> int:
  """All `local` units if they fit in `budget_bytes`, else the largest divisor that does (at
  least 1)."""
  fit = max(1, int(budget_bytes // max(per_unit, 1.0)))
  return max(d for d in range(1, min(fit, local) + 1) if local % d == 0)


def memory_budget(fraction: float = 0.5) -> float:
  """`fraction` of the memory the units' working set may take: of the device's free memory
  where JAX reports it (GPUs), else of the machine's available memory."""
  stats = jax.devices()[0].memory_stats() or {}
  if "bytes_limit" in stats:
    return fraction * (stats["bytes_limit"] - stats.get("bytes_in_use", 0))
  with open("/proc/meminfo") as f:
    available = next(int(line.split()[1]) * 1024 for line in f
                     if line.startswith("MemAvailable:"))
  return fraction * available


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
