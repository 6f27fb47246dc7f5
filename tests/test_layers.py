"""The package's import graph: layers that point one way, no package cycles, no private names.

Walks every jaxdrift/**/*.py with `ast` (imports at module level and inside functions, and
attribute chains through an imported module such as `cam.core.program`) and checks the
layer order below (each layer imports only from the layers below it):

  _console, distributed, geometry, workdir, results -> models -> data, xla_cache
  -> train, cam -> metrics -> faithfulness -> study -> report -> pipeline -> cli

Packages on the same layer are siblings and do not import each other (train and cam;
data and xla_cache; the leaves). The package root (`jaxdrift/__init__.py`) is the public
namespace above everything and is not checked; `import jaxdrift as jd` followed by `jd.x`
counts as an import of `jaxdrift.x`.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "jaxdrift"

# Layer of each top-level module or subpackage of jaxdrift, lowest first.
LAYERS = {
    "_console": 0, "distributed": 0, "geometry": 0, "workdir": 0, "results": 0,
    "models": 1,
    "data": 2, "xla_cache": 2,
    "train": 3, "cam": 3,
    "metrics": 4,
    "faithfulness": 5,
    "study": 6,
    "report": 7,
    "pipeline": 8,
    "cli": 9, "__main__": 10,
}
# Names kept in a lower namespace for compatibility, resolved on first use (PEP 562): the
# name moved up, no module of the lower package uses it.
ALIASES = {("jaxdrift.study", "jaxdrift.pipeline")}


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


FILES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
MODULES = set(FILES)


def _private(name: str) -> bool:
  return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _top(module: str) -> str:
  """The top-level part of jaxdrift a module belongs to ("" for the package root)."""
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else ""


def _chain(node):
  """(name, [attr, ...]) of an attribute chain a.b.c, or None."""
  attrs = []
  while isinstance(node, ast.Attribute):
    attrs.append(node.attr)
    node = node.value
  return (node.id, attrs[::-1]) if isinstance(node, ast.Name) else None


def _scan(module: str, path: pathlib.Path | None = None):
  """(edges, private): the jaxdrift modules `module` uses, and its private names of others.

  edges: set of (target module, line); private: set of "target.name (line)".
  """
  path = path or FILES[module]
  tree = ast.parse(path.read_text(), str(path))
  package = module if path.name == "__init__.py" else module.rpartition(".")[0]
  aliases, edges, private = {}, set(), set()
  imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
  for node in imports:
    if isinstance(node, ast.Import):
      for a in node.names:
        if a.name.split(".")[0] != "jaxdrift":
          continue
        edges.add((a.name, node.lineno))
        if a.asname:
          aliases[a.asname] = a.name
        else:
          aliases["jaxdrift"] = "jaxdrift"
      continue
    base = node.module or ""
    if node.level:
      base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                      + ([node.module] if node.module else []))
    if base.split(".")[0] != "jaxdrift":
      continue
    for a in node.names:
      full = f"{base}.{a.name}"
      if full in MODULES:  # a module (private module names of the package are allowed)
        edges.add((full, node.lineno))
        aliases[a.asname or a.name] = full
      else:
        edges.add((base, node.lineno))
        if _private(a.name) and base != module:
          private.add(f"{base}.{a.name} (line {node.lineno})")
  for node in ast.walk(tree):
    chain = _chain(node) if isinstance(node, ast.Attribute) else None
    if chain is None or chain[0] not in aliases:
      continue
    current = aliases[chain[0]]
    for attr in chain[1]:
      if f"{current}.{attr}" in MODULES:
        current = f"{current}.{attr}"
        edges.add((current, node.lineno))
        continue
      if _private(attr) and current != module:
        private.add(f"{current}.{attr} (line {node.lineno})")
      break
  edges = {(t, line) for t, line in edges if t != "jaxdrift"}
  return edges, private


SCANS = {m: _scan(m) for m in sorted(MODULES)}


def test_the_scan_sees_imports_inside_functions_and_attribute_chains():
  # cli/pipeline.py imports the pipeline inside `run`; report/__init__.py reads metrics and
  # results; cam/checks.py builds models through `models.create`.
  assert "jaxdrift.pipeline" in {t for t, _ in SCANS["jaxdrift.cli.pipeline"][0]}
  assert {"jaxdrift.metrics", "jaxdrift.results"} <= {t for t, _ in SCANS["jaxdrift.report"][0]}
  assert "jaxdrift.models" in {t for t, _ in SCANS["jaxdrift.cam.checks"][0]}


def test_every_part_of_the_package_has_a_layer():
  tops = {_top(m) for m in MODULES} - {""}
  assert tops <= set(LAYERS), (f"place {sorted(tops - set(LAYERS))} in LAYERS and in the "
                               "order of this module's docstring")


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _top(m)))
def test_imports_point_down(module):
  wrong = []
  for target, line in sorted(SCANS[module][0]):
    src, dst = _top(module), _top(target)
    if src == dst or (module, target) in ALIASES:
      continue
    if dst == "" or LAYERS[dst] >= LAYERS[src]:
      wrong.append(f"line {line}: {target} (layer {LAYERS.get(dst, 'root')}, this module's "
                   f"is {LAYERS[src]})")
  assert not wrong, f"{module} imports from its own layer or above: {wrong}"


def test_no_cycle_between_packages():
  graph = {}
  for module, (edges, _) in SCANS.items():
    for target, _ in edges:
      src, dst = _top(module), _top(target)
      if src and dst and src != dst and (module, target) not in ALIASES:
        graph.setdefault(src, set()).add(dst)
  state, cycles = {}, []

  def visit(node, path):
    state[node] = "open"
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == "open":
        cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else path + [nxt])
      elif nxt not in state:
        visit(nxt, path + [nxt])
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node, [node])
  assert not cycles, f"package import cycles: {cycles}"


def test_no_private_names_across_modules():
  found = {m: sorted(p) for m, (_, p) in SCANS.items() if p}
  assert not found, f"private names used from other modules (give them a public name): {found}"


def test_the_checks_catch_an_upward_import_and_a_private_name(tmp_path):
  """The scan of a planted metrics module that imports the report (inside a function) and
  two private names of other modules (by name and through an attribute chain)."""
  path = tmp_path / "planted.py"
  path.write_text("from jaxdrift.metrics.stats import _rng\n"
                  "def f():\n  from jaxdrift import report\n  return report.tables._fmt\n")
  edges, private = _scan("jaxdrift.metrics.planted", path)
  targets = {t for t, _ in edges}
  assert {"jaxdrift.report", "jaxdrift.report.tables", "jaxdrift.metrics.stats"} <= targets
  assert LAYERS[_top("jaxdrift.report")] > LAYERS[_top("jaxdrift.metrics.planted")]
  assert private == {"jaxdrift.metrics.stats._rng (line 1)",
                     "jaxdrift.report.tables._fmt (line 4)"}
