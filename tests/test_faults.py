"""Fault injection: runs killed at chosen moments, files damaged or deleted, typos, nonsense
numbers and two processes on one directory, for meta-training and evaluation runs.

Each case failed before the guarantees of README's "Runs and their files" were built: a kill
between the final checkpoint and meta.npz left a stale meta.npz forever, a damaged newest
checkpoint crashed the run, a typo was refused after config.json was written, nonsense numbers
ran or crashed with tracebacks, and two processes could share a run directory.
"""
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optim4rl
from optim4rl.cli import main
from optim4rl.meta.config import MetaConfig
from optim4rl.meta.loop import meta_train
from optim4rl.training.files import RunInUse, RunLock, atomic_path
from toy_task import Toy

TESTS = Path(__file__).parent
# Every output: meta.npz, meta_avg.npz (average_decay) and meta_best.npz (validation).
CFG = MetaConfig(units=2, reset_interval=100, iterations=4, average_decay=0.5, validate_every=2)
TOY = Toy(validated=True)
OUTPUTS = ("meta.npz", "meta_avg.npz", "meta_best.npz")


def flat_meta(path: Path) -> np.ndarray:
  meta, rule = optim4rl.load_meta_params(path)
  return np.asarray(optim4rl.flatten_meta(meta, rule))


def without_seconds(path: Path) -> list[list[str]]:
  rows = [line.split(",") for line in path.read_text().strip().splitlines()]
  return [r[:1] + r[2:] for r in rows]


def assert_same_run(run: Path, reference: Path):
  """`run` holds the outputs and logs of the uninterrupted `reference`."""
  for name in OUTPUTS:
    np.testing.assert_array_equal(flat_meta(run / name), flat_meta(reference / name), name)
  assert without_seconds(run / "log.csv") == without_seconds(reference / "log.csv")
  assert (run / "validation.csv").read_text() == (reference / "validation.csv").read_text()


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> Path:
  """An uninterrupted toy run: checkpoints 2 and 4, every output."""
  run = tmp_path_factory.mktemp("whole")
  meta_train(CFG, TOY, run, checkpoint_every=2)
  assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["2", "4"]
  return run


def copy_run(whole: Path, to: Path) -> Path:
  shutil.copytree(whole, to, ignore=shutil.ignore_patterns(".lock"))
  return to


# -- kills and lost outputs ---------------------------------------------------------------------

KILLED_RUN = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from optim4rl.meta import loop
from optim4rl.meta.config import MetaConfig
from toy_task import Toy
saves = []
save = loop.save_meta_params
def killing_save(path, meta, rule):
  if os.path.basename(str(path)) == "meta.npz":
    saves.append(path)
    if len(saves) == 2:  # the final checkpoint (iteration 4) is saved, its meta.npz not yet
      os.kill(os.getpid(), signal.SIGKILL)
  save(path, meta, rule)
loop.save_meta_params = killing_save
loop.meta_train(MetaConfig(**{cfg!r}), Toy(validated=True), {run!r}, checkpoint_every=2)
"""


def test_sigkill_between_final_checkpoint_and_outputs_then_rerun(whole, tmp_path):
  run = tmp_path / "killed"
  script = KILLED_RUN.format(tests=str(TESTS), cfg=dataclasses.asdict(CFG), run=str(run))
  out = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
  assert (run / "checkpoints" / "4").exists()
  assert not np.array_equal(flat_meta(run / "meta.npz"), flat_meta(whole / "meta.npz"))  # stale
  meta_train(CFG, TOY, run, checkpoint_every=2)  # nothing left to run: outputs re-derived
  assert_same_run(run, whole)


def test_outputs_deleted_from_a_finished_run_are_written_again(whole, tmp_path):
  run = copy_run(whole, tmp_path / "run")
  for name in OUTPUTS:
    (run / name).unlink()
  meta_train(CFG, TOY, run, checkpoint_every=2)
  assert_same_run(run, whole)


# -- damaged checkpoints ------------------------------------------------------------------------

def truncate_largest_file(step_dir: Path):
  largest = max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  with open(largest, "r+b") as f:
    f.truncate(largest.stat().st_size // 2)


def delete_metadata(step_dir: Path):
  for p in step_dir.rglob("_METADATA"):
    p.unlink()


DAMAGES = {"truncated": truncate_largest_file, "metadata deleted": delete_metadata}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_newest_checkpoint_falls_back_to_the_older(whole, tmp_path, capfd, damage):
  run = copy_run(whole, tmp_path / "run")
  DAMAGES[damage](run / "checkpoints" / "4")
  meta_train(CFG, TOY, run, checkpoint_every=2)
  err = capfd.readouterr().err
  skipped = [line for line in err.splitlines() if "checkpoint 4 is unreadable" in line]
  assert len(skipped) == 1 and "Traceback" not in err, err[-3000:]
  assert_same_run(run, whole)  # iterations 3 and 4 ran again from checkpoint 2
  assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["2", "4"]


def test_no_readable_checkpoint_is_a_clear_error(whole, tmp_path):
  run = copy_run(whole, tmp_path / "run")
  for step in ("2", "4"):
    delete_metadata(run / "checkpoints" / step)
  with pytest.raises(ValueError, match="no checkpoint can be restored"):
    meta_train(CFG, TOY, run, checkpoint_every=2)
  assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["2", "4"]  # left as found


# -- configurations ------------------------------------------------------------------------------

def cli(argv: list[str], capsys) -> tuple[int, str]:
  """(exit status, stderr) of the command line."""
  try:
    code = main(argv)
  except SystemExit as e:  # argparse's refusals
    code = e.code
  return code, capsys.readouterr().err


GRID_RUN = ["meta-train", "--units", "2", "--reset-interval", "4", "--iterations", "1"]


def test_a_typo_writes_nothing_and_the_corrected_command_is_the_same_run(tmp_path, capsys):
  run = tmp_path / "run"
  for typo in (["--backend", "foo"], ["--reward-scale", "weird"], ["--rule", "adamw"],
               ["--lrs", "1e-2", "1e-2"]):
    code, err = cli(GRID_RUN + typo + ["--out", str(run)], capsys)
    assert code == 2 and "Traceback" not in err and not run.exists(), (typo, err)
  assert cli(GRID_RUN + ["--out", str(run)], capsys)[0] == 0  # the backend chosen by default
  config = (run / "config.json").read_text()
  backend = optim4rl.resolve_backend(None)
  assert f'"backend": "{backend}"' in config
  assert cli(GRID_RUN + ["--backend", backend, "--out", str(run)], capsys)[0] == 0  # same run
  assert (run / "config.json").read_text() == config


def test_a_damaged_config_is_a_clear_error(whole, tmp_path):
  run = copy_run(whole, tmp_path / "run")
  (run / "config.json").write_text('{"meta": {"rule": "optim')  # torn by an old writer
  with pytest.raises(ValueError, match="config.json is damaged"):
    meta_train(CFG, TOY, run, checkpoint_every=2)


def test_fewer_iterations_than_a_finished_run_change_nothing(whole, tmp_path):
  run = copy_run(whole, tmp_path / "run")
  config = (run / "config.json").read_text()
  meta = meta_train(dataclasses.replace(CFG, iterations=2), TOY, run, checkpoint_every=2)
  assert (run / "config.json").read_text() == config
  np.testing.assert_array_equal(optim4rl.flatten_meta(meta, CFG.rule), flat_meta(run / "meta.npz"))
  assert_same_run(run, whole)


# -- two processes on one directory -------------------------------------------------------------

HOLDER = """
import sys, time
from optim4rl.training.files import RunLock
lock = RunLock(sys.argv[1]).acquire()  # held until the process ends
print("locked", flush=True)
time.sleep(600)
"""


def test_a_second_process_on_a_run_directory_is_refused(tmp_path):
  from optim4rl.evaluation.compare import evaluate_specs
  from optim4rl.evaluation.trainers import make_trainer
  run = tmp_path / "run"
  holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE,
                            text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(RunInUse, match=f"in use by another optim4rl process \\(pid {holder.pid}"):
      meta_train(CFG, TOY, run)
    assert not (run / "config.json").exists()
    trainer = make_trainer("small_dense_short", steps=32 * 20, envs=32)
    with pytest.raises(RunInUse, match="in use"):
      evaluate_specs(trainer, ["adam@1e-2"], seeds=1, directory=run)
    assert not (run / "checkpoints").exists()
  finally:
    holder.kill()
    holder.wait()
  with RunLock(run):  # released however its holder ended
    pass


# -- nonsense numbers ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def damaged_files(tmp_path_factory) -> dict[str, Path]:
  """Meta-parameter files: truncated, with a flipped byte, and holding a NaN."""
  root = tmp_path_factory.mktemp("npz")
  meta = optim4rl.init_meta_params(jax.random.PRNGKey(0))
  good = root / "good.npz"
  optim4rl.save_meta_params(good, meta, "optim4rl")
  data = good.read_bytes()
  files = {"truncated": data[:len(data) // 2], "bit-flipped": bytearray(data)}
  files["bit-flipped"][len(data) // 2] ^= 0x10
  paths = {}
  for name, content in files.items():
    paths[name] = root / f"{name}.npz"
    paths[name].write_bytes(bytes(content))
  meta["net1"]["mlp"]["b1"] = meta["net1"]["mlp"]["b1"].at[0].set(jnp.nan)
  paths["nan"] = root / "nan.npz"
  optim4rl.save_meta_params(paths["nan"], meta, "optim4rl")
  return paths


NONSENSE = {
    "meta-lr nan": ["meta-train", "--meta-lr", "nan"],
    "meta-lr -1": ["meta-train", "--meta-lr", "-1"],
    "units 2.7": ["meta-train", "--units", "2.7"],
    "units inf": ["meta-train", "--units", "inf"],
    "average-decay 1": ["meta-train", "--average-decay", "1"],
    "meta-grad-clip nan": ["meta-train", "--meta-grad-clip", "nan"],
    "lrs 0": ["meta-train", "--lrs", "0"],
    "steps 0": ["train", "--steps", "0"],
    "steps -5": ["train", "--steps", "-5"],
    "steps inf": ["evaluate", "--steps", "inf"],
    "adam@nan": ["train", "--optimizer", "adam@nan"],
    "adam@-1": ["train", "--optimizer", "adam@-1"],
    "adam@inf": ["evaluate", "--optimizers", "adam@inf"],
    "seeds 0": ["evaluate", "--seeds", "0"],
}


@pytest.mark.parametrize("case", NONSENSE)
def test_nonsense_numbers_are_refused_in_one_line(case, tmp_path, capsys):
  run = tmp_path / "run"
  out = [] if NONSENSE[case][0] == "train" else ["--out", str(run)]
  code, err = cli(NONSENSE[case] + out, capsys)
  last = err.strip().splitlines()[-1]  # argparse prints its usage lines before
  assert code == 2 and "Traceback" not in err and last.startswith("optim4rl "), err
  assert "error" in last
  assert not run.exists()


@pytest.mark.parametrize("damage", ["truncated", "bit-flipped", "nan"])
def test_damaged_meta_parameter_files_are_refused_in_one_line(damaged_files, damage, capsys):
  code, err = cli(["train", "--optimizer", f"optim4rl:{damaged_files[damage]}"], capsys)
  assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
  assert str(damaged_files[damage]) in err


def test_non_finite_meta_parameters_after_the_first_update_stop_the_run(tmp_path):
  cfg = dataclasses.replace(CFG, iterations=1, meta_lr=1e39)  # inf in float32
  with pytest.raises(FloatingPointError, match="after iteration 1 are not finite"):
    meta_train(cfg, TOY, tmp_path, checkpoint_every=1)
  assert not any((tmp_path / name).exists() for name in OUTPUTS)
  assert not list((tmp_path / "checkpoints").iterdir())


# -- the optax transforms -----------------------------------------------------------------------

def test_a_gradient_tree_of_another_structure_is_refused():
  tx = optim4rl.optim4rl(optim4rl.init_meta_params(jax.random.PRNGKey(0)), 1e-3)
  state = tx.init({"w": jnp.ones((2, 3)), "b": jnp.ones(2)})
  with pytest.raises(ValueError):  # same size, 8 parameters, other tree
    tx.update({"x": jnp.ones(8)}, state)
  with pytest.raises(ValueError):  # same tree and size, other shapes
    tx.update({"w": jnp.ones((3, 2)), "b": jnp.ones(2)}, state)


@pytest.mark.parametrize("clip", [-1.0, float("nan"), float("inf")])
def test_a_bad_clip_is_refused_at_construction(clip):
  with pytest.raises(ValueError, match="clip"):
    optim4rl.optim4rl(optim4rl.init_meta_params(jax.random.PRNGKey(0)), 1e-3, clip=clip)
  with pytest.raises(ValueError, match="clip"):
    MetaConfig(clip=clip)


# -- evaluation runs ------------------------------------------------------------------------------

ENVS, CHUNKS = 32, 4
STEPS = ENVS * 20 * CHUNKS  # one A2C update per chunk


def train_run(directory: Path, progress=None):
  from optim4rl.envs import gridworld
  from optim4rl.training.a2c import train
  from optim4rl.training.checkpoint import RunCheckpoint
  ckpt = RunCheckpoint(directory, {"what": "fault test"}, every_seconds=0)
  try:
    return train(gridworld.make("small_dense_short"), optax.adam(1e-2), steps=STEPS,
                 num_envs=ENVS, chunks=CHUNKS, seeds=(0, 1), checkpoint=ckpt,
                 progress=progress), ckpt
  finally:
    ckpt.close()


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
  """(directory, curve) of a finished evaluation run, saved after every chunk."""
  directory = tmp_path_factory.mktemp("evaluation")
  curve, _ = train_run(directory)
  assert sorted(p.name for p in (directory / "state").iterdir()) == ["3", "4"]
  return directory, curve


EVALUATION_DAMAGES = {
    "state truncated": lambda d: truncate_largest_file(d / "state" / "4"),
    "state metadata deleted": lambda d: delete_metadata(d / "state" / "4"),
    "history truncated": lambda d: (d / "history" / "4.npz").write_bytes(
        (d / "history" / "4.npz").read_bytes()[:100]),
}


@pytest.mark.parametrize("damage", EVALUATION_DAMAGES)
def test_an_evaluation_run_falls_back_from_a_damaged_checkpoint(evaluation, tmp_path, capfd,
                                                               damage):
  directory, whole = evaluation
  run = copy_run(directory, tmp_path / "run")
  EVALUATION_DAMAGES[damage](run)
  curve, ckpt = train_run(run)
  assert ckpt.resumed_after == 3
  assert "checkpoint 4 is unreadable" in capfd.readouterr().err
  for field in ("steps", "returns", "losses"):
    np.testing.assert_array_equal(getattr(curve, field), getattr(whole, field))


def test_outputs_are_replaced_atomically(tmp_path):
  from optim4rl.evaluation import report
  path = tmp_path / "curves.csv"
  path.write_text("the previous curves\n")

  class Exploding:  # a writer killed half way
    def __iter__(self):
      yield np.zeros(2)
      raise KeyboardInterrupt

  result = SimpleNamespace(label="adam", curve=SimpleNamespace(steps=[1, 2], returns=Exploding()))
  with pytest.raises(KeyboardInterrupt):
    report.write_csv([result], path)
  assert path.read_text() == "the previous curves\n"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.csv"]  # no temporary left
  with atomic_path(path) as tmp:
    tmp.write_text("new\n")
  assert path.read_text() == "new\n"
