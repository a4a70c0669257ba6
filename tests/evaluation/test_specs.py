import hashlib

import jax
import jax.numpy as jnp
import pytest

import optim4rl
from optim4rl.evaluation import specs


def first_update(tx, grad):
  g = jnp.asarray(grad, jnp.float32)
  return float(tx.update(g, tx.init(g))[0])


def test_optimizer_for_takes_the_spec_the_default_lr_and_the_environments_clip():
  # Gridworld A2C clips gradients elementwise at 1, Brax's PPO does not.
  assert first_update(specs.optimizer_for("sgd@0.5", "small_dense_short", updates=10),
                      5.0) == pytest.approx(-0.5)
  assert first_update(specs.optimizer_for("sgd@0.5", "inverted_pendulum", updates=10),
                      5.0) == pytest.approx(-2.5)
  default = specs.default_learning_rate("big_dense_long")
  assert first_update(specs.optimizer_for("sgd", "big_dense_long", updates=10),
                      1.0) == pytest.approx(-default)
  assert first_update(specs.optimizer_for("sgd@0.5", "big_dense_long", updates=10,
                                          learning_rate=0.25), 1.0) == pytest.approx(-0.25)
  linear = specs.optimizer_for("sgd@0.5:linear", "small_dense_short", updates=2)
  assert first_update(linear, 1.0) == pytest.approx(-0.5)  # steps fall from 1x to 0 over 2


@pytest.mark.parametrize("spec, error", [("adam@fast", "'fast' is not a learning rate"),
                                         ("adam@1e-3:cosine", "unknown schedule 'cosine'"),
                                         ("adamw", "unknown optimizer 'adamw'"),
                                         ("optim4rl", "needs its meta-parameter file")])
def test_bad_specs_are_value_errors(spec, error):
  with pytest.raises(ValueError, match=error):
    specs.optimizer_for(spec, "small_dense_short", updates=10)


@pytest.mark.parametrize("spec", ["adam@nan", "adam@-1", "adam@inf", "adam@0", "sgd@-inf"])
def test_learning_rates_must_be_finite_and_positive(spec):
  with pytest.raises(ValueError, match=f"optimizer '{spec}': the learning rate must be a "
                                       "finite number > 0, got"):
    specs.optimizer_for(spec, "small_dense_short", updates=10)


def test_bad_learning_rate_arguments_and_classical_clips_are_value_errors():
  with pytest.raises(ValueError, match="optimizer 'adam': the learning rate must be.*got -1.0"):
    specs.optimizer_for("adam", "small_dense_short", updates=10, learning_rate=-1.0)
  with pytest.raises(ValueError, match="optimizer 'sgd': the learning rate must be.*got nan"):
    specs.make_optimizer("sgd", float("nan"))
  # optax.clip(0) would zero every update, silently.
  for clip in (0, 0.0, -1.0, float("nan"), float("inf")):
    with pytest.raises(ValueError, match="optimizer 'adam': clip must be None .* or a finite"):
      specs.make_optimizer("adam", 1e-3, clip=clip)
  for clip in (None, 0.5):
    specs.make_optimizer("rmsprop", 1e-3, clip=clip)


def test_meta_file_hash(tmp_path):
  assert specs.meta_file_hash("adam@3e-2") is None
  path = tmp_path / "meta.npz"
  optim4rl.save_meta_params(path, optim4rl.init_meta_params(jax.random.key(0), "optim4rl"),
                            "optim4rl")
  digest = hashlib.sha256(path.read_bytes()).hexdigest()
  assert specs.meta_file_hash(f"optim4rl:{path}") == digest
  assert specs.meta_file_hash(f"learned:{path}@1e-3:linear") == digest
  with pytest.raises(FileNotFoundError):
    specs.meta_file_hash(f"optim4rl:{tmp_path / 'missing.npz'}")


def test_open_specs_for_agents_that_report_activations():
  from optim4rl.evaluation.trainers import make_trainer
  from optim4rl.rules.open import PRETRAINED
  trainer = make_trainer("CartPole-v1", steps=4 * 128 * 10)  # 10 rollouts
  assert trainer.open_plan == (4, 4, 10)  # CartPole: 4 minibatches, 4 epochs
  for spec in ("open:breakout", f"open:{PRETRAINED / 'multi_OPEN.npy'}"):
    tx = specs.optimizer_for(spec, trainer.environment, updates=trainer.updates,
                             open_plan=trainer.open_plan)
    assert callable(tx.update)
  assert specs.meta_file_hash("open:breakout") == hashlib.sha256(
      (PRETRAINED / "breakout_OPEN.npy").read_bytes()).hexdigest()
  plan = trainer.open_plan
  with pytest.raises(ValueError, match="OPEN learns its own step sizes"):
    specs.optimizer_for("open:breakout@1e-3", "CartPole-v1", updates=10, open_plan=plan)
  with pytest.raises(ValueError, match="OPEN needs an agent that reports"):
    specs.optimizer_for("open:breakout", "small_dense_short", updates=10)
  with pytest.raises(ValueError, match="name its meta-parameters"):
    specs.optimizer_for("open", "CartPole-v1", updates=10, open_plan=plan)
  with pytest.raises(FileNotFoundError):
    specs.optimizer_for("open:nowhere.npy", "CartPole-v1", updates=10, open_plan=plan)
