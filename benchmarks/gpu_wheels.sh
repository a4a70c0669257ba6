#!/usr/bin/env bash
# Here, on a development machine with network: download into .whl/ (git-ignored) the wheels the
# GPU machine lacks. Its image has jax 0.11 with CUDA, triton, flax, optax, orbax, pybind11,
# cmake and ninja (the device tool's KINDS.md) but no network: jax-triton (the triton backend)
# and brax with the packages its import needs must travel, 18 MB, leaving room in the 64 MiB a
# call carries. mujoco's viewer packages (mujoco-studio, glfw, pyopengl) stay behind: brax's
# envs, mjx included, ran without them (Python 3.12 venv, brax's Ant stepped, the Brax PPO tests
# passed). The versions are those the CPU venv resolves (README's install).
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES=(
  jax-triton==0.3.1
  brax==0.14.2 jaxopt==0.8.5 ml-collections==1.1.0 tensorboardx==2.6.5 trimesh==5.2.0
  flask==3.1.3 flask-cors==6.0.5 itsdangerous==2.2.0 blinker==1.9.0
  mujoco==4.0.0 mujoco-core==4.0.0 mujoco-mjx==3.17.0
)
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done
rm -rf .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${PLATFORMS[@]}" -d .whl "${PACKAGES[@]}"
du -sh .whl
