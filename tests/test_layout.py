"""Layout of the package: no import cycles, layers import only downwards, and `import optim4rl`
loads the library alone (no environments, agents, training, meta-training, evaluation or CLI).

Static checks read the sources with `ast` (no import, no JAX); imports inside functions count
as much as module-level ones, and so do `importlib.import_module("optim4rl....")` calls with a
literal name. By hand, from the repository root:

  python tests/test_layout.py          # each module's layer and imports; cycles and layering
                                       # violations (exit status 1 if there are any)
  python tests/test_layout.py --tree   # README.md's layout table, from the docstrings
  python tests/test_layout.py --write-readme   # that table written into README.md
"""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Source folder -> package it installs as (pyproject.toml: kernels/ installs as optim4rl.kernels).
PACKAGE_DIRS = {"optim4rl": "optim4rl", "kernels": "optim4rl.kernels"}

# Layers, lowest first. A module may import its own layer and the layers below it, never above.
# "api" is optim4rl/__init__.py, the library's public surface: it sits above what it re-exports
# and below the experiment stack; "main" is optim4rl/__main__.py, above everything.
LAYERS = ("rules/constants", "rules", "backends", "transforms/schedules", "api", "envs", "agents",
          "training", "meta", "evaluation", "cli", "main")
EXPERIMENT_STACK = ("optim4rl.envs", "optim4rl.agents", "optim4rl.training", "optim4rl.meta",
                    "optim4rl.evaluation", "optim4rl.cli")
# Third-party packages that `import optim4rl` (the library) does not load today.
NOT_LOADED_BY_LIBRARY = ("brax", "flax", "orbax", "matplotlib", "tqdm", "triton", "jax_triton",
                         "torch")


def layer_of(module: str) -> str | None:
  """The layer of a module, by its path in the package; None for a module no layer names."""
  parts = module.split(".")
  if parts == ["optim4rl"]:
    return "api"
  sub = parts[1]
  if sub == "__main__":
    return "main"
  if sub == "rules":
    return "rules/constants" if parts[2:] == ["constants"] else "rules"
  if sub in ("backends", "kernels"):  # the Triton kernels are the "triton" backend's code
    return "backends"
  if sub in ("transforms", "schedules", "open_optimizer"):
    return "transforms/schedules"
  if sub in ("envs", "agents", "training", "meta", "evaluation", "cli"):
    return sub
  return None


def discover() -> dict[str, Path]:
  """Module name -> source file, for every module of the package (kernels/ included)."""
  modules = {}
  for folder, package in PACKAGE_DIRS.items():
    for path in sorted((ROOT / folder).rglob("*.py")):
      parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
      if "__pycache__" in parts:
        continue
      if parts[-1] == "__init__":
        parts = parts[:-1]
      modules[".".join([package, *parts])] = path
  return modules


@dataclass(frozen=True)
class Edge:
  src: str
  dst: str
  line: int
  text: str  # the import statement as written
  implicit: bool = False  # dst is a package whose __init__ runs first because src imports below it

  def where(self, modules) -> str:
    how = f"(runs package {self.dst}'s __init__) " if self.implicit else ""
    return f"{modules[self.src].relative_to(ROOT)}:{self.line}: {how}{self.text}"


def _is_package(module, modules):
  return modules[module].name == "__init__.py"


def _resolve(name: str, modules) -> str | None:
  """The module `import name` binds: name itself, else its longest prefix in the package."""
  while name and name not in modules:
    name = name.rpartition(".")[0]
  return name or None


def _ancestors(module):
  parts = module.split(".")
  return [".".join(parts[:i]) for i in range(1, len(parts))]


def imports(modules) -> list[Edge]:
  """Every intra-package import, explicit ones and the package __init__s they run first."""
  edges = []
  for src, path in modules.items():
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
      targets = []
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        if node.level:
          base = src.split(".")
          if not _is_package(src, modules):
            base = base[:-1]
          base = base[:len(base) - (node.level - 1)]
          base = ".".join(base + ([node.module] if node.module else []))
        else:
          base = node.module or ""
        # `from P import x` imports the module P.x when there is one, else P itself.
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                   for a in node.names]
      elif (isinstance(node, ast.Call) and node.args
            and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
            and ast.unparse(node.func) in ("importlib.import_module", "import_module")):
        targets = [node.args[0].value]
      text = " ".join(ast.unparse(node).split()) if targets else ""
      for target in targets:
        if not target.startswith("optim4rl"):
          continue
        dst = _resolve(target, modules)
        if dst is None:
          continue
        if dst != src:
          edges.append(Edge(src, dst, node.lineno, text))
        # Importing a.b.c runs a and a.b first; those src itself lies in are already running.
        for pkg in _ancestors(dst):
          if pkg in modules and pkg not in _ancestors(src) and pkg != src:
            edges.append(Edge(src, pkg, node.lineno, text, implicit=True))
  return sorted(set(edges), key=lambda e: (e.src, e.line, e.dst, e.implicit))


def cycles(modules, edges) -> list[list[Edge]]:
  """One cycle (as its edges) per strongly connected component of the import graph."""
  graph = {m: [] for m in modules}
  for e in edges:
    graph[e.src].append(e)
  index, low, stack, on_stack, sccs = {}, {}, [], set(), []

  def visit(v):  # Tarjan; the graph is small enough for recursion
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for e in graph[v]:
      if e.dst not in index:
        visit(e.dst)
        low[v] = min(low[v], low[e.dst])
      elif e.dst in on_stack:
        low[v] = min(low[v], index[e.dst])
    if low[v] == index[v]:
      scc = set()
      while True:
        w = stack.pop()
        on_stack.discard(w)
        scc.add(w)
        if w == v:
          break
      if len(scc) > 1:
        sccs.append(scc)

  for m in sorted(modules):
    if m not in index:
      visit(m)
  found = []
  for scc in sccs:  # a shortest cycle through the component's first module, by BFS
    start = min(scc)
    prev, frontier = {start: None}, [start]
    while frontier and start not in [e.dst for f in frontier for e in graph[f]]:
      nxt = []
      for f in frontier:
        for e in graph[f]:
          if e.dst in scc and e.dst not in prev:
            prev[e.dst] = e
            nxt.append(e.dst)
      frontier = nxt
    last = next(e for f in frontier for e in graph[f] if e.dst == start)
    path, e = [last], prev[last.src]
    while e is not None:
      path.append(e)
      e = prev[e.src]
    found.append(path[::-1])
  return found


def violations(edges) -> list[Edge]:
  """Imports of a higher layer from a lower one (a package __init__ that an import runs is
  named only when the import itself is not already one)."""
  bad = [e for e in edges if LAYERS.index(layer_of(e.src)) < LAYERS.index(layer_of(e.dst))]
  explicit = {(e.src, e.line) for e in bad if not e.implicit}
  return [e for e in bad if not (e.implicit and (e.src, e.line) in explicit)]


def _graph():
  modules = discover()
  return modules, imports(modules)


# ---------------------------------------------------------------------------------- tests


def test_every_module_has_a_layer():
  modules = discover()
  unplaced = [f"{p.relative_to(ROOT)} ({m})" for m, p in modules.items() if layer_of(m) is None]
  assert not unplaced, ("modules outside every layer; give them one in tests/test_layout.py "
                        f"layer_of: {unplaced}")


def test_no_import_cycles():
  modules, edges = _graph()
  found = cycles(modules, edges)
  report = "\n\n".join(
      " -> ".join([c[0].src] + [e.dst for e in c]) + "\n" +
      "\n".join("  " + e.where(modules) for e in c) for c in found)
  assert not found, f"import cycles between modules:\n{report}"


def test_layers_import_only_downwards():
  modules, edges = _graph()
  bad = violations(edges)
  report = "\n".join(f"  {layer_of(e.src)} -> {layer_of(e.dst)}: {e.where(modules)}" for e in bad)
  assert not bad, f"lower layers importing higher ones (order: {' < '.join(LAYERS)}):\n{report}"


def test_library_import_loads_no_experiment_stack():
  code = "import json, sys, optim4rl; print(json.dumps(sorted(sys.modules)))"
  run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
  assert run.returncode == 0, f"`import optim4rl` failed:\n{run.stderr}"
  loaded = json.loads(run.stdout.strip().splitlines()[-1])
  stack = [m for m in loaded if any(m == p or m.startswith(p + ".") for p in EXPERIMENT_STACK)]
  assert not stack, f"`import optim4rl` imports the experiment stack: {stack}"
  third = sorted({m.split(".")[0] for m in loaded} & set(NOT_LOADED_BY_LIBRARY))
  assert not third, f"`import optim4rl` imports {third}"


def test_readme_layout_lists_every_module():
  block = re.search(r"<!-- layout -->\n(.*?)<!-- /layout -->", (ROOT / "README.md").read_text(),
                    re.S)
  assert block, "README.md has no <!-- layout --> block"
  listed = set(re.findall(r"^\| `([^`]+)` \|", block.group(1), re.M))
  files = {str(p.relative_to(ROOT)) for p in discover().values()}
  stale = sorted(p for p in listed if not (ROOT / p).exists())
  assert files <= listed and not stale, (
      f"README.md's layout misses {sorted(files - listed)} and lists {stale}, which do not "
      "exist; regenerate it with `python tests/test_layout.py --tree`")


# ------------------------------------------------------------------------------ by hand

# Folders and files without docstrings: one line each for README's layout.
FOLDER_JOBS = {
    "csrc/": "C++/CUDA kernels, built by setup.py through CMake",
    "kernels/": "Triton kernels, installed as `optim4rl.kernels`",
    "training/": "run scripts: the main job, the paper's single-task and six-world runs",
    "benchmarks/": "throughput/memory scripts, the kernels' instruction mix (callgrind), the rule-response probe, the layer study",
    "benchmarks/results/": "measured results (JSON, curves, plots); see docs/results.md",
    "docs/results.md": "every measurement in detail",
    "tests/": "tests, one folder per sub-package; tests/test_layout.py checks this layout",
    ".ci/run": "CI: a fresh install, then the test command",
}
FILE_JOBS = {"optim4rl/__main__.py": "`python -m optim4rl`: the command line of cli.py"}


def first_sentence(text: str) -> str:
  """The first sentence of a docstring's or comment's first paragraph, without its full stop."""
  para = " ".join(text.strip().split("\n\n")[0].split())
  for m in re.finditer(r"\.(?=\s+\D|$)", para):  # "et al. 2020" goes on
    if not re.search(r"(\bal|\be\.g|\bi\.e|\bcf|\bvs)$", para[:m.start()]):
      return para[:m.start()].strip()
  return para


def job(path: Path) -> str:
  rel = str(path.relative_to(ROOT))
  if rel in FILE_JOBS:
    return FILE_JOBS[rel]
  if path.suffix == ".py":
    doc = ast.get_docstring(ast.parse(path.read_text()))
  else:  # C/C++/CUDA: the leading // comment
    lines = []
    for line in path.read_text().splitlines():
      if not line.startswith("//"):
        break
      lines.append(line[2:].strip())
    doc = "\n".join(lines)
  return first_sentence(doc) if doc else "(no docstring)"


def escape(cell: str) -> str:
  return cell.replace("|", "\\|")


def tree() -> str:
  """README's layout table: one row per module of the package, per C++/CUDA file and per folder;
  each says what it is for with the first sentence of its docstring (or leading comment)."""
  rows = []
  for folder in PACKAGE_DIRS:
    if folder != "optim4rl":
      rows.append((f"{folder}/", FOLDER_JOBS[f"{folder}/"]))
    for path in sorted((ROOT / folder).rglob("*.py")):
      if "__pycache__" not in path.parts:
        rows.append((str(path.relative_to(ROOT)), job(path)))
    if folder == "optim4rl":
      rows.append(("csrc/", FOLDER_JOBS["csrc/"]))
      rows += [(str(p.relative_to(ROOT)), job(p)) for p in sorted((ROOT / "csrc").iterdir())
               if p.suffix in (".h", ".cc", ".cu")]
  rows += [(k, v) for k, v in FOLDER_JOBS.items() if k not in ("csrc/", "kernels/")]
  return "\n".join(["| path | what it is for |", "| --- | --- |"] +
                   [f"| `{p}` | {escape(j)} |" for p, j in rows])


def main(argv):
  if argv[1:] == ["--tree"]:
    print(tree())
    return 0
  if argv[1:] == ["--write-readme"]:
    readme = ROOT / "README.md"
    text, n = re.subn(r"(<!-- layout -->\n).*?(<!-- /layout -->)",
                      lambda m: m.group(1) + tree() + "\n" + m.group(2), readme.read_text(),
                      flags=re.S)
    assert n == 1, "README.md needs exactly one <!-- layout --> ... <!-- /layout --> block"
    readme.write_text(text)
    return 0
  modules, edges = _graph()
  for m in sorted(modules):
    deps = sorted({e.dst for e in edges if e.src == m and not e.implicit})
    print(f"{layer_of(m) or '?':<20} {m:<34} -> {', '.join(deps) or '-'}")
  unplaced = [m for m in modules if layer_of(m) is None]
  found = cycles(modules, edges)
  bad = violations([e for e in edges if layer_of(e.src) and layer_of(e.dst)])
  print(f"\n{len(modules)} modules, {len({(e.src, e.dst) for e in edges})} import edges "
        f"(package __init__s included); layers: {' < '.join(LAYERS)}")
  for m in unplaced:
    print(f"NO LAYER: {modules[m].relative_to(ROOT)}")
  for c in found:
    print("CYCLE: " + " -> ".join([c[0].src] + [e.dst for e in c]))
    for e in c:
      print("  " + e.where(modules))
  for e in bad:
    print(f"LAYERING: {layer_of(e.src)} imports {layer_of(e.dst)}: {e.where(modules)}")
  if not (found or bad or unplaced):
    print("no cycles, no layering violations")
  return 1 if found or bad or unplaced else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
