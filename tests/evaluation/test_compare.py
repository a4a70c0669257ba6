import hashlib
import json

import numpy as np
import pytest

from optim4rl.evaluation import compare, trainers
from optim4rl.training import a2c


def test_checkpoint_directories_keep_their_names(tmp_path):
  # Names of evaluation runs made before: a rename would orphan their checkpoints.
  sha = lambda spec: hashlib.sha1(spec.encode()).hexdigest()[:8]
  assert compare.checkpoint_directory(tmp_path, "adam@3e-2").name == f"adam@3e-2-{sha('adam@3e-2')}"
  spec = "optim4rl:runs/sds/meta.npz@5e-2:linear"
  assert compare.checkpoint_directory(tmp_path, spec).name == (
      f"optim4rl_runs_sds_meta.npz@5e-2_linear-{sha(spec)}")
  long = "learned:" + "x" * 100
  assert len(compare.checkpoint_directory(tmp_path, long).name) == 60 + 9


def test_trainer_of_a_gridworld_and_unknown_environments():
  trainer = trainers.make_trainer("small_dense_short", steps=25600, envs=64)
  assert trainer.agent == "A2C" and trainer.environment == "small_dense_short"
  assert trainer.updates == a2c.optimizer_updates(25600, 64)
  assert trainer.steps == 25600 and trainer.settings == dict(envs=64)
  assert trainers.make_trainer("small_dense_short", steps=25600, envs=64, chunks=4).updates == (
      a2c.optimizer_updates(25600, 64, chunks=4))
  assert trainers.brax_eval_envs(True) == 16 and trainers.brax_eval_envs(False) == 128
  assert trainers.brax_eval_envs(True, 0) == 0
  with pytest.raises(ValueError, match="unknown Brax task"):
    trainers.make_trainer("medium_dense_short", steps=1000)


def test_evaluate_specs_resumes_by_spec(tmp_path):
  trainer = trainers.make_trainer("small_dense_short", steps=10240, envs=64, chunks=2)
  results, ckpts = compare.evaluate_specs(trainer, ["adam@3e-3", "sgd@1e-2:linear"], seeds=2,
                                          directory=tmp_path)
  assert [r.label for r in results] == ["adam@3e-3", "sgd@1e-2:linear"]
  assert all(r.final.shape == (2,) and ckpts[r.label].resumed_after == 0 for r in results)
  assert ckpts["adam@3e-3"].directory == compare.checkpoint_directory(
      tmp_path / "checkpoints", "adam@3e-3").absolute()
  identity = json.loads((ckpts["adam@3e-3"].directory / "identity.json").read_text())
  assert identity == dict(environment="small_dense_short", steps=10240, seeds=2,
                          optimizer="adam@3e-3", backend=None, meta_sha256=None, envs=64)
  again, ckpts = compare.evaluate_specs(trainer, ["adam@3e-3"], seeds=2, directory=tmp_path)
  assert ckpts["adam@3e-3"].resumed_after == 2
  np.testing.assert_array_equal(again[0].final, results[0].final)
  with pytest.raises(ValueError, match="holds another run"):  # other seeds: another run
    compare.evaluate_specs(trainer, ["adam@3e-3"], seeds=3, directory=tmp_path)
