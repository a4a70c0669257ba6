"""A meta-training task plug-in without agents, for tests of the outer loop: cheap to compile
and run, so a test can meta-train, kill and resume it many times."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from optim4rl.meta.tasks import Task, Tasks


def _square_norm(meta):
  return sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(meta))


@dataclasses.dataclass(frozen=True)
class Toy:
  """A unit counts its iterations and its loss is |meta|^2; from iteration `nan_from` on (if
  > 0) the loss is nan. With `validated`, validation scores meta by -|meta|^2 (two "agents")."""
  nan_from: int = 0
  validated: bool = False

  def tasks(self, cfg):
    def unit_loss(meta, count):
      loss = _square_norm(meta)
      loss = loss * jnp.where((self.nan_from > 0) & (count + 1 >= self.nan_from), jnp.nan, 1.0)
      return loss, (count + 1, (jnp.float32(1), jnp.float32(1)))
    fresh = lambda keys: jnp.zeros(keys.shape[0], jnp.int32)
    validate = None
    if self.validated:
      validate = lambda meta: -float(_square_norm(meta)) * np.ones(2)
    return Tasks((Task("toy", unit_loss, fresh, cfg.units),), validate)
