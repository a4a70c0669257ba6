"""Builds the C++ (and, where nvcc exists, CUDA) kernel libraries through CMake."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()


class CMakeExtension(Extension):
  def __init__(self, name):
    super().__init__(name, sources=[])


class CMakeBuild(build_ext):
  """One CMake project builds every library into the package directory of this build."""

  built = False

  def build_extension(self, ext):
    if CMakeBuild.built:  # one CMake run builds every library
      return
    CMakeBuild.built = True
    out_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
    build_dir = Path(self.build_temp).resolve() / "cmake"
    build_dir.mkdir(parents=True, exist_ok=True)
    args = [f"-DOPTIM4RL_LIB_DIR={out_dir}", f"-DPython_EXECUTABLE={sys.executable}",
            "-DCMAKE_BUILD_TYPE=Release", f"-DOPTIM4RL_CUDA={'ON' if has_nvcc() else 'OFF'}"]
    if "OPTIM4RL_CMAKE_ARGS" in os.environ:
      args += os.environ["OPTIM4RL_CMAKE_ARGS"].split()
    jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
    subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build_dir), "-G", "Ninja", *args],
                   check=True)
    subprocess.run(["cmake", "--build", str(build_dir), "-j", jobs], check=True)


def has_nvcc():
  if os.environ.get("OPTIM4RL_CUDA", "1") == "0":
    return False
  return shutil.which("nvcc") is not None or Path("/usr/local/cuda/bin/nvcc").exists()


extensions = [CMakeExtension("optim4rl._cpu")]
if has_nvcc():
  extensions.append(CMakeExtension("optim4rl._cuda"))
setup(ext_modules=extensions, cmdclass={"build_ext": CMakeBuild})
