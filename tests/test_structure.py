"""The package's layers hold: no import cycle, no import from a layer above,
no module imports the training job (`main` loads it by name) or a
command (ARCHITECTURE.md, "Layers")."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "inatsounds_jax"

# Lowest first; a module may import its own layer and those below.
LAYERS = (
    ("base", ("inatsounds_jax", "registry", "storage", "sphere", "cli",
              "scored_rows",
              "compilation", "plots", "metrics", "config_defaults",
              "processes", "workdir", "workdir_lock", "annotations",
              "tables", "jobs")),
    ("data", ("audio", "release", "l48", "data", "frontend", "windows",
              "frontend_reference", "input_pipeline", "data_sources",
              "synthetic", "window_store")),
    ("geo", ("geo", "geo.sinr", "geo.range_model", "geo.prior",
             "geo.location_input")),
    ("models", ("models", "models.*", "augment")),
    ("training parts", ("losses", "label_modes", "mean_teacher",
                        "adaptation", "checkpoints", "evaluators",
                        "evaluators.*")),
    ("objectives", ("objectives", "objectives.*")),
    ("trained models", ("trained",)),
    ("jobs", ("train", "export", "curate", "inference", "soundscapes",
              "geo.train_range", "embedding_store", "custom_classifier",
              "agile_modelling")),
    ("commands", ("main", "predict", "evaluate", "custom", "agile",
                  "compare")),
)
COMMANDS = ("main", "predict", "evaluate", "custom", "agile", "compare")


def modules() -> dict[str, pathlib.Path]:
  out = {}
  for path in PACKAGE.rglob("*.py"):
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    name = ".".join(p for p in parts if p != "__init__")
    out[name or "inatsounds_jax"] = path
  return out


def layer_of(name: str) -> int:
  for index, (_, members) in enumerate(LAYERS):
    for member in members:
      if name == member or (member.endswith(".*") and
                            name.startswith(member[:-1])):
        return index
  raise AssertionError(f"inatsounds_jax.{name} is in no layer of "
                       "tests/test_structure.py: give it one")


def imports() -> dict[str, set[str]]:
  """Module -> the package's modules it imports (anywhere in its body)."""
  found = modules()
  edges = {name: set() for name in found}
  for name, path in found.items():
    for node in ast.walk(ast.parse(path.read_text())):
      targets = []
      if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
          "inatsounds_jax"):
        base = node.module.removeprefix("inatsounds_jax").lstrip(".")
        for alias in node.names:
          full = f"{base}.{alias.name}".lstrip(".")
          targets.append(full if full in found else (base or
                                                     "inatsounds_jax"))
      elif isinstance(node, ast.Import):
        targets = [a.name.removeprefix("inatsounds_jax").lstrip(".") or
                   "inatsounds_jax" for a in node.names
                   if a.name.startswith("inatsounds_jax")]
      edges[name].update(t for t in targets if t in found and t != name)
  return edges


def test_every_module_has_a_layer_and_imports_none_above_it():
  upward = [f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} "
            f"({LAYERS[layer_of(b)][0]})"
            for a, targets in imports().items() for b in targets
            if layer_of(b) > layer_of(a)]
  assert not upward


def test_there_is_no_import_cycle():
  edges = imports()
  state: dict[str, int] = {}  # 1: on the current path, 2: done.

  def visit(name, path):
    state[name] = 1
    for target in sorted(edges[name]):
      assert state.get(target) != 1, " -> ".join(path + [name, target])
      if target not in state:
        visit(target, path + [name])
    state[name] = 2

  for name in sorted(edges):
    if name not in state:
      visit(name, [])


def test_no_module_imports_the_training_job_or_a_command():
  # main.py loads the training job by name (its JOBS registry).
  edges = imports()
  assert sorted(a for a, t in edges.items() if "train" in t) == []
  assert [(a, sorted(t & set(COMMANDS))) for a, t in edges.items()
          if t & set(COMMANDS)] == []
