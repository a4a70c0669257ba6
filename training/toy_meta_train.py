"""Small end-to-end meta-training run of Optim4RL that finishes on a CPU in about a minute.

Until the gridworld/A2C pipeline lands this is the project's smoke-sized main job. Each of
n training units regresses a random linear model (its own task, parameters and optimizer
state); the learned optimizer takes M = 4 inner steps, the outer loss is the regression
loss on fresh data after them, and Adam updates the meta-parameters. Units are reset on the
pipeline schedule of Section 5.1 (unit i resets when t mod m == r_i). At the end, fresh
tasks are trained for 40 steps with the learned optimizer and with Adam.

  python training/toy_meta_train.py [--units 64] [--iterations 300] [--backend cpu]
"""
import argparse
import time

import jax
import jax.numpy as jnp
import optax

import optim4rl

DIM, BATCH, M = 16, 32, 4


def new_task(key):
  kw, kp = jax.random.split(key)
  return {"w_true": jax.random.normal(kw, (DIM,)), "params": 0.1 * jax.random.normal(kp, (DIM,))}


def loss_fn(params, w_true, key):
  x = jax.random.normal(key, (BATCH, DIM))
  y = x @ w_true + 0.1 * jax.random.normal(jax.random.fold_in(key, 1), (BATCH,))
  return jnp.mean(jnp.square(x @ params - y))


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--units", type=int, default=64)
  ap.add_argument("--reset-interval", type=int, default=32)
  ap.add_argument("--iterations", type=int, default=300)
  ap.add_argument("--lr", type=float, default=0.03, help="agent learning rate")
  ap.add_argument("--meta-lr", type=float, default=1e-3)
  ap.add_argument("--backend", default=None)
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args()

  key = jax.random.key(args.seed)
  meta = optim4rl.init_meta_params(key, "optim4rl")
  meta_opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(args.meta_lr))
  meta_state = meta_opt.init(meta)
  offsets = jnp.linspace(0, args.reset_interval - 1, args.units).astype(jnp.int32)

  def unit_outer_loss(meta, unit, state, key):
    tx = optim4rl.optim4rl(meta, args.lr, backend=args.backend)
    params = unit["params"]
    for i in range(M):
      g = jax.grad(loss_fn)(params, unit["w_true"], jax.random.fold_in(key, i))
      u, state = tx.update(g, state)
      params = params + u
    outer = loss_fn(params, unit["w_true"], jax.random.fold_in(key, M))
    return outer, ({**unit, "params": jax.lax.stop_gradient(params)},
                   jax.tree.map(jax.lax.stop_gradient, state))

  def outer_loss(meta, units, states, key):
    keys = jax.random.split(key, args.units)
    losses, (units, states) = jax.vmap(unit_outer_loss, in_axes=(None, 0, 0, 0))(
        meta, units, states, keys)
    return jnp.mean(jnp.log(losses)), (units, states, jnp.mean(losses))

  @jax.jit
  def train_step(t, meta, meta_state, units, states, key):
    k_loss, k_reset = jax.random.split(key)
    grads, (units, states, loss) = jax.grad(outer_loss, has_aux=True)(meta, units, states, k_loss)
    updates, meta_state = meta_opt.update(grads, meta_state, meta)
    meta = optax.apply_updates(meta, updates)
    reset = (t % args.reset_interval) == offsets  # pipeline training (Section 5.1)
    fresh = jax.vmap(new_task)(jax.random.split(k_reset, args.units))
    fresh_states = jax.vmap(lambda p: optim4rl.init_state("optim4rl", p))(fresh["params"])
    pick = lambda new, old: jnp.where(reset.reshape((-1,) + (1,) * (old.ndim - 1)), new, old)
    return meta, meta_state, jax.tree.map(pick, fresh, units), jax.tree.map(pick, fresh_states, states), loss

  units = jax.vmap(new_task)(jax.random.split(jax.random.fold_in(key, 1), args.units))
  states = jax.vmap(lambda p: optim4rl.init_state("optim4rl", p))(units["params"])
  start = time.time()
  for t in range(args.iterations):
    meta, meta_state, units, states, loss = train_step(
        t, meta, meta_state, units, states, jax.random.fold_in(key, 100 + t))
    if t % 50 == 0 or t == args.iterations - 1:
      print(f"iteration {t:4d}  outer loss {float(loss):8.4f}  ({time.time() - start:.1f}s)")

  def final_loss(tx, task_key):
    task = new_task(task_key)
    params, state = task["params"], tx.init(task["params"])
    for i in range(40):
      g = jax.grad(loss_fn)(params, task["w_true"], jax.random.fold_in(task_key, i))
      u, state = tx.update(g, state)
      params = params + u
    return loss_fn(params, task["w_true"], jax.random.fold_in(task_key, 999))
  eval_keys = jax.random.split(jax.random.fold_in(key, 7), 20)
  for name, tx in (("optim4rl (meta-trained)", optim4rl.optim4rl(meta, args.lr, backend=args.backend)),
                   ("optim4rl (untrained)", optim4rl.optim4rl(optim4rl.init_meta_params(key), args.lr, backend=args.backend)),
                   ("adam", optax.adam(args.lr))):
    losses = jax.jit(jax.vmap(lambda k: final_loss(tx, k)))(eval_keys)
    print(f"{name:26s} loss after 40 steps: {float(jnp.mean(losses)):.4f} "
          f"+- {float(jnp.std(losses) / jnp.sqrt(len(losses))):.4f}")


if __name__ == "__main__":
  main()
