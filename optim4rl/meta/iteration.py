"""One meta-training iteration over all tasks, as one jitted function of a typed state.

`iteration(state) -> (state, metrics)`: for every task, pipeline resets and the unit-averaged
meta-gradient (meta/pipeline.py); their mean over tasks; one meta-optimizer step; the moving
average of the meta-parameters. Nothing leaves the device: the host loop (meta/loop.py) reads
the metrics when it logs.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from optim4rl.meta import pipeline
from optim4rl.meta.config import MetaConfig
from optim4rl.meta.tasks import Tasks
from optim4rl.rules import init_meta_params


class MetaState(NamedTuple):
  """Everything a meta-training run resumes from (saved whole by orbax)."""
  meta: Any             # meta-parameters
  meta_opt: Any         # meta-optimizer state
  meta_avg: Any         # exponential moving average of the meta-parameters
  units: tuple          # per task, its units (leading axis cfg.units; split over a mesh)
  iteration: jax.Array  # int32, iterations done
  key: jax.Array        # PRNG key of the next iteration
  best_score: jax.Array  # float32, best validation score so far (-inf: none yet)
  best_meta: Any        # the meta-parameters that scored it (meta_best.npz; `meta` at first)


class Metrics(NamedTuple):
  """What one iteration reports; stays on the device until the loop logs."""
  meta_grad_norm: jax.Array  # () the global norm of the meta-gradient averaged over tasks
  return_sums: jax.Array     # (tasks,) sum of the returns of the episodes that ended
  episodes: jax.Array        # (tasks,) number of those episodes
  meta_finite: jax.Array     # () bool: the meta-parameters after the update are all finite


def initial_state(cfg: MetaConfig, tasks: Tasks, mesh: Mesh | None = None) -> MetaState:
  """Fresh meta-parameters and units, from cfg.seed; with a `mesh`, units split over it and
  the rest replicated on it."""
  key = jax.random.PRNGKey(cfg.seed)
  k_meta, key = jax.random.split(key)
  meta = init_meta_params(k_meta, cfg.rule)
  units = []
  for task in tasks.tasks:
    key, k_units = jax.random.split(key)
    units.append(pipeline.place_units(task.fresh_units(jax.random.split(k_units, cfg.units)),
                                      mesh))
  rest = pipeline.replicate(dict(
      meta=meta, meta_opt=pipeline.meta_optimizer(cfg).init(meta), meta_avg=meta,
      iteration=jnp.zeros([], jnp.int32), key=key, best_score=jnp.float32(-jnp.inf),
      best_meta=meta), mesh)
  # Every leaf in its own buffer (meta_avg is meta; Brax states share zeros): the state is
  # donated to the iteration, and a buffer cannot be donated twice. Only repeated buffers are
  # copied: the units can be most of the machine's memory.
  return _own_buffers(MetaState(units=tuple(units), **rest))


def _own_buffers(tree):
  seen = set()

  def buffers(x):
    return {shard.data.unsafe_buffer_pointer() for shard in x.addressable_shards}

  def own(x):
    if buffers(x) & seen:  # any shard shared (a replicated copy may share one device's)
      x = jnp.copy(x)
    seen.update(buffers(x))
    return x
  return jax.tree.map(own, tree)


def make_iteration(cfg: MetaConfig, tasks: Tasks, mesh: Mesh | None = None,
                   unit_chunk: int | None = None):
  """`iteration(state) -> (state, metrics)`, jitted; the state passed in is donated (its
  buffers are reused for the new one), so it must not be used again. `unit_chunk`: units run
  at once on a device (None: all; see pipeline.meta_step)."""
  steps = [pipeline.meta_step(task, cfg, mesh, unit_chunk) for task in tasks.tasks]
  opt = pipeline.meta_optimizer(cfg)
  decay = cfg.average_decay

  def iteration(state: MetaState) -> tuple[MetaState, Metrics]:
    t = state.iteration
    key, *task_keys = jax.random.split(state.key, len(steps) + 1)
    grads, units, ret, eps = [], [], [], []
    for step, task_units, k in zip(steps, state.units, task_keys):
      g, u, (r, e) = step(state.meta, task_units, t, k)
      grads.append(g)
      units.append(u)
      ret.append(r)
      eps.append(e)
    grads = jax.tree.map(lambda *g: jnp.mean(jnp.stack(g), axis=0), *grads)
    updates, meta_opt = opt.update(grads, state.meta_opt, state.meta)
    meta = optax.apply_updates(state.meta, updates)
    meta_avg = jax.tree.map(lambda a, m: decay * a + (1 - decay) * m, state.meta_avg, meta)
    state = state._replace(meta=meta, meta_opt=meta_opt, meta_avg=meta_avg, units=tuple(units),
                           iteration=t + 1, key=key)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(meta)]))
    return state, Metrics(pipeline.global_norm(grads), jnp.stack(ret), jnp.stack(eps), finite)

  return jax.jit(iteration, donate_argnums=0)
