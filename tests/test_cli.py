import subprocess
import sys

import jax
import pytest

import optim4rl
from optim4rl.cli import main


def test_unknown_world_is_a_usage_error(capsys):
  with pytest.raises(SystemExit) as exit_:
    main(["train", "--world", "medium_dense_short"])
  assert exit_.value.code == 2
  assert "unknown gridworld 'medium_dense_short'" in capsys.readouterr().err


def test_bad_optimizer_and_checkpoint_errors(tmp_path, capsys):
  assert main(["train", "--optimizer", "adamw", "--steps", "1000"]) == 2
  assert "unknown optimizer 'adamw'" in capsys.readouterr().err
  (tmp_path / "meta.npz").write_bytes(b"garbage")
  assert main(["evaluate", "--optimizers", "adam", f"optim4rl:{tmp_path / 'meta.npz'}",
               "--out", str(tmp_path)]) == 2
  assert "meta.npz" in capsys.readouterr().err
  assert main(["train", "--optimizer", f"optim4rl:{tmp_path / 'missing.npz'}"]) == 2


def test_an_internal_type_error_is_not_a_usage_error(monkeypatch):
  from optim4rl.evaluation import trainers

  def broken(*args, **kwargs):
    raise TypeError("a bug, not a user's mistake")
  monkeypatch.setattr(trainers, "make_trainer", broken)
  with pytest.raises(TypeError, match="a bug"):  # its traceback shows, no exit 2
    main(["train", "--steps", "1000"])


def test_evaluate_writes_table_csv_and_plot(tmp_path, capsys):
  meta = optim4rl.init_meta_params(jax.random.key(0), "optim4rl")
  optim4rl.save_meta_params(tmp_path / "meta.npz", meta, "optim4rl")
  out = tmp_path / "eval"
  command = ["evaluate", "--world", "small_dense_short", "--seeds", "2", "--steps", "25600",
             "--envs", "64", "--optimizers", "adam@3e-3", f"optim4rl:{tmp_path / 'meta.npz'}",
             "--out", str(out)]
  assert main(command) == 0
  text = capsys.readouterr().out
  assert "adam@3e-3" in text and "+-" in text and "returns.png" in text
  assert (out / "returns.png").stat().st_size > 1000
  rows = (out / "curves.csv").read_text().splitlines()
  assert rows[0] == "optimizer,seed,env_steps,return" and len(rows) > 4
  # The same command again reuses the finished runs; other meta-parameters are another run.
  assert main(command) == 0
  again = capsys.readouterr().out
  assert again.count("resumed after chunk") == 2
  table = lambda t: [line for line in t.splitlines() if "+-" in line]
  assert table(again) == table(text)
  assert (out / "curves.csv").read_text().splitlines() == rows
  optim4rl.save_meta_params(tmp_path / "meta.npz",
                            optim4rl.init_meta_params(jax.random.key(1), "optim4rl"), "optim4rl")
  assert main(command) == 2
  assert "holds another run" in capsys.readouterr().err


def test_evaluate_schedules_and_picks_each_optimizers_best(tmp_path, capsys):
  code = main(["evaluate", "--world", "small_dense_short", "--seeds", "2", "--steps", "25600",
               "--envs", "64", "--optimizers", "adam@3e-3", "adam@1e-2:linear", "sgd@1e-2",
               "--out", str(tmp_path)])
  assert code == 0
  text = capsys.readouterr().out
  table, best = text.split("best setting of each optimizer")
  scores = {line.split()[0]: float(line.split()[1]) for line in table.splitlines()
            if line.startswith(("adam", "sgd"))}
  best_adam = max(("adam@3e-3", "adam@1e-2:linear"), key=scores.get)
  rows = [line.split() for line in best.splitlines()[1:] if line.strip() and "%" in line]
  assert [r[0] for r in rows] == sorted([best_adam, "sgd@1e-2"], key=lambda k: -scores[k])
  assert rows[0][-1] == "100.0%"
  for spec, error in [("adam@3e-3:cosine", "unknown schedule 'cosine'"),
                      ("adam@fast", "'fast' is not a learning rate")]:
    assert main(["evaluate", "--optimizers", spec, "--out", str(tmp_path)]) == 2
    assert error in capsys.readouterr().err


def test_meta_train_with_validation(tmp_path, capsys):
  out = tmp_path / "run"
  code = main(["meta-train", "--worlds", "small_dense_short", "--units", "2", "--envs-per-unit",
               "2", "--reset-interval", "2", "--iterations", "2", "--validate-every", "1",
               "--validate-seeds", "2", "--validate-steps", "20480", "--out", str(out)])
  assert code == 0
  assert "meta_best.npz" in capsys.readouterr().out
  rows = (out / "validation.csv").read_text().strip().splitlines()
  assert rows[0] == "iteration,final_return,stderr" and len(rows) == 3
  optim4rl.load_meta_params(out / "meta_best.npz")
  assert main(["meta-train", "--task", "inverted_pendulum", "--validate-every", "5",
               "--out", str(tmp_path / "ppo")]) == 2
  assert "not available for PPO" in capsys.readouterr().err
  assert main(["meta-train", "--task", "inverted_pendulum", "--outer-loss", "total",
               "--out", str(tmp_path / "ppo")]) == 2
  assert "PPO loss" in capsys.readouterr().err


def test_module_entry_point_help():
  out = subprocess.run([sys.executable, "-m", "optim4rl", "--help"], capture_output=True,
                       text=True, check=True)
  for command in ("meta-train", "train", "evaluate", "bench"):
    assert command in out.stdout


def test_bench_prints_a_table(capsys):
  assert main(["bench", "--sizes", "64", "--backends", "reference"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert "forward" in lines[0] and "meta" in lines[0] and "FMA peak" in lines[0]
  assert all(column in lines[1] for column in ("GFLOP/s", "of peak", "B/param", "GB/s"))
  rows = [line.split() for line in lines[2:]]
  for backend in ("reference", "flax"):  # the anchor joins every Optim4RL table
    assert [r[2] for r in rows if r[1] == backend] == ["forward", "meta"]
  forward = next(r for r in rows if r[1] == "reference" and r[2] == "forward")
  assert forward[4] == "M/s" and forward[6].endswith("%") and forward[7] == "136"
  assert any(r[1] == "optax.adam" for r in rows)
  assert main(["bench", "--sizes", "64", "--backends", "warp"]) == 2
