"""The house rules, checked over every module (folders walked recursively).

- ``core``'s floor plan: ``data < models < runs < training < the rest`` (``cli``, ``bench`` and
  any feature package above training); a floor imports only its own and lower floors, and the
  root modules (the ground floor: config, errors, files, ...). So ``core.runs`` never imports
  ``core.training``. The root holds at most 10 modules.
- no module of ``core``, ``app`` or ``pages`` imports another module's ``_private`` names;
  every module of ``core`` with a public face declares ``__all__``; no test module imports
  another (shared helpers: ``tests/helpers.py``).
- ``core`` never imports ``app`` or streamlit: the engine runs without the dashboard.
- ``app/views`` are pure: no Keras model building (no keras/tensorflow, no model builder).
- no import cycles inside ``core``, counting imports inside functions too (a hidden cycle is
  still a cycle).
- public functions of ``core`` and ``app/views`` are typed.
- only ``app/``, ``pages/`` and ``streamlit_app.py`` import streamlit.
- ``streamlit_app.py`` is the only router; its page table lists each page of ``pages/`` once.
- the dashboard's server process never trains: worker processes do.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE, APP, VIEWS = ROOT / "core", ROOT / "app", ROOT / "app" / "views"
PAGES = ROOT / "pages"


def _modules(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[str]:
    """Every module ``path`` imports, at any depth (functions included), fully qualified."""
    names: list[str] = []
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else None
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = (package or _module_name(path)).split(".")
                base = ".".join(anchor[: len(anchor) - node.level + 1] + ([base] if base else []))
            names.append(base)
            names += [f"{base}.{a.name}" for a in node.names]  # ``from core.data import images``
    return names


def test_the_layout_walk_sees_every_room() -> None:
    found = {_module_name(p) for p in _modules(CORE)}
    for expected in ("core.cli", "core.cli.worker", "core.bench.dashboard", "core.data.index",
                     "core.models.backbones", "core.runs.store", "core.runs.formats",
                     "core.training.trainer", "core.training.sources", "core.tasks"):  # fmt: skip
        assert expected in found
    assert {_module_name(p) for p in _modules(VIEWS)} >= {"app.views.dashboard", "app.views.charts"}


FLOORS = ("data", "models", "runs", "training")  # bottom up; any other package is above them
MAX_ROOT_MODULES = 10


def _floor(module: str) -> int | None:
    """A ``core`` module's floor: 0 data, 1 models, 2 runs, 3 training, 4 the rest (cli, bench,
    feature packages); ``None`` for a root module (the ground floor)."""
    parts = module.split(".")
    if len(parts) < 2 or (CORE / f"{parts[1]}.py").exists():
        return None
    return FLOORS.index(parts[1]) if parts[1] in FLOORS else len(FLOORS)


def test_the_floor_plan_is_kept() -> None:
    graph = _core_graph()
    upward = [
        f"{name} -> {target}"
        for name, targets in graph.items()
        for target in targets
        if (low := _floor(name)) is not None and (high := _floor(target)) is not None and high > low
    ]
    assert upward == [], "a lower floor imports a higher one"
    # The ground floor serves everyone: it never reaches up to the command line or benchmarks.
    ground = [
        f"{name} -> {target}"
        for name, targets in graph.items()
        if _floor(name) is None and name not in ("core", "core.__main__")
        for target in targets
        if _floor(target) == len(FLOORS)
    ]
    assert ground == []


def test_runs_never_imports_training() -> None:
    graph = _core_graph()
    crossing = [
        f"{name} -> {target}"
        for name, targets in graph.items()
        if name.startswith("core.runs")
        for target in targets
        if target.startswith("core.training")
    ]
    assert crossing == []


def test_the_floor_finder_places_modules() -> None:
    assert [_floor(m) for m in ("core.data.index", "core.models", "core.runs.store",
                                "core.training.trainer", "core.cli.runs", "core.bench")] == [
        0, 1, 2, 3, 4, 4
    ]  # fmt: skip
    assert _floor("core.config") is None and _floor("core") is None


def test_the_core_root_holds_at_most_ten_modules() -> None:
    root = sorted(p.name for p in CORE.glob("*.py"))
    assert len(root) <= MAX_ROOT_MODULES, root


def _private_imports(path: Path) -> list[str]:
    """``from x import _name`` of another module, and ``module._name`` of an imported module."""
    tree = ast.parse(path.read_text())
    own = _module_name(path) if path.is_relative_to(ROOT) else path.stem
    modules: set[str] = set()  # local names bound to imported modules
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module != own:
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{own}:{node.lineno} {node.module}.{alias.name}")
                elif node.module.split(".")[0] in ("core", "app"):
                    modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in ("core", "app"):
                    modules.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
        ):
            found.append(f"{own}:{node.lineno} {node.value.id}.{node.attr}")
    return found


def test_no_module_imports_another_modules_private_names() -> None:
    found = [
        hit
        for root in (CORE, APP, PAGES)
        for path in _modules(root)
        for hit in _private_imports(path)
    ]
    assert found == []


def test_the_private_import_finder_finds_both_forms(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text(
        "from core.data.index import _hidden, shown\nfrom core import files\nfiles._remove(1)\n"
    )
    hits = _private_imports(tmp_path / "m.py")
    assert [h.split(" ")[1] for h in hits] == ["core.data.index._hidden", "files._remove"]


def _public_names(tree: ast.Module) -> list[str]:
    names = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                elts = target.elts if isinstance(target, ast.Tuple) else [target]
                names += [t.id for t in elts if isinstance(t, ast.Name)]
    return [n for n in names if not n.startswith("_")]


def _declared_all(tree: ast.Module) -> list[str] | None:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return [ast.literal_eval(e) for e in node.value.elts]  # type: ignore[attr-defined]
    return None


def test_every_module_with_a_public_face_declares_all() -> None:
    missing: list[str] = []
    unknown: list[str] = []
    unlisted: list[str] = []  # a public function or class left out of the module's __all__
    for path in _modules(CORE):
        if path.name == "__main__.py":
            continue
        tree = ast.parse(path.read_text())
        declared = _declared_all(tree)
        if declared is None:
            if _public_names(tree):
                missing.append(_module_name(path))
            continue
        bound = (
            set(_public_names(tree))
            | {
                alias.asname or alias.name.split(".")[0]
                for node in tree.body
                if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names
            }
            | {
                node.target.id
                for node in tree.body
                if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
            }
        )
        unknown += [f"{_module_name(path)}.{name}" for name in declared if name not in bound]
        unlisted += [
            f"{_module_name(path)}.{node.name}"
            for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.ClassDef))
            and not node.name.startswith("_")
            and node.name not in declared
        ]
    assert missing == [] and unknown == [] and unlisted == []


def test_no_test_module_imports_another() -> None:
    """Shared helpers live in ``tests/helpers.py`` (fixtures in conftest): a test module is
    never imported by another (checked over every test folder and the shared modules)."""
    tests = ROOT / "tests"
    checked = sorted(p for p in tests.rglob("*.py") if "__pycache__" not in p.parts)
    test_modules = {p.stem for p in tests.rglob("test_*.py")}
    offenders = [
        f"{p.relative_to(ROOT)}: {name}"
        for p in checked
        for name in _imports(p)
        if name.split(".")[-1] in test_modules or name.split(".")[-1] == "conftest"
    ]
    assert offenders == []


def test_core_speaks_of_the_product_not_its_history() -> None:
    """No issue numbers in code, docstrings or comments of the engine."""
    import re

    pattern = re.compile(r"\bissues?\s+#?\d+", re.IGNORECASE)
    found = [
        f"{_module_name(p)}:{n}"
        for p in _modules(CORE)
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert found == []


def test_core_never_imports_app_or_streamlit() -> None:
    offenders = [
        f"{_module_name(path)}: {name}"
        for path in _modules(CORE)
        for name in _imports(path)
        if name.split(".")[0] in ("streamlit", "app")
    ]
    assert offenders == []


def test_only_app_imports_streamlit() -> None:
    allowed = {ROOT / "streamlit_app.py", *_modules(APP), *_modules(PAGES)}
    outside = [p for p in ROOT.rglob("*.py") if ".venv" not in p.parts and "tests" not in p.parts]
    offenders = [
        str(p.relative_to(ROOT))
        for p in outside
        if p not in allowed and any(n.split(".")[0] == "streamlit" for n in _imports(p))
    ]
    assert offenders == []


def test_views_never_build_keras_models() -> None:
    forbidden = ("keras", "tensorflow", "core.training.model", "core.training.trainer")
    offenders = [
        f"{_module_name(path)}: {name}"
        for path in _modules(VIEWS)
        for name in _imports(path)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]
    assert offenders == []


def _core_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in _modules(CORE)}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = {n for n in _imports(path) if n in modules and n != name}
        # ``from core.data import images`` names the package and the module: keep the module only
        graph[name] = {t for t in targets if not any(o.startswith(t + ".") for o in targets)}
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if state.get(nxt) is None and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if state.get(node) is None and (found := visit(node)):
            return found
    return None


def test_no_import_cycles_inside_core() -> None:
    graph = _core_graph()
    # Package __init__ files re-export their modules: importing the package is importing them.
    for pkg in [n for n in graph if (CORE / Path(*n.split(".")[1:]) / "__init__.py").exists()]:
        graph[pkg] = {m for m in graph[pkg] if not m.startswith(pkg + ".")}
    assert _find_cycle(graph) is None, " -> ".join(_find_cycle(graph) or [])


def test_the_cycle_finder_finds_a_hidden_cycle() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_public_functions_have_type_hints() -> None:
    missing = []
    for path in _modules(CORE) + _modules(VIEWS):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            funcs = [node] if isinstance(node, ast.FunctionDef) else []
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                funcs = [n for n in node.body if isinstance(n, ast.FunctionDef)]
            for fn in funcs:
                if fn.name.startswith("_") and fn.name != "__init__":
                    continue
                args = [
                    a for a in fn.args.args + fn.args.kwonlyargs if a.arg not in ("self", "cls")
                ]
                if fn.returns is None or any(a.annotation is None for a in args):
                    missing.append(f"{_module_name(path)}:{fn.lineno} {fn.name}")
    assert missing == []


def test_streamlit_app_is_the_only_router() -> None:
    def routes(path: Path) -> bool:
        return any(
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("navigation", "switch_page")
            for node in ast.walk(ast.parse(path.read_text()))
        )

    scripts = [ROOT / "streamlit_app.py", *_modules(APP), *_modules(PAGES)]
    routers = [str(p.relative_to(ROOT)) for p in scripts if routes(p)]
    assert routers == ["streamlit_app.py"]


def test_the_page_table_lists_each_page_once_in_order() -> None:
    """``st.navigation`` shows ``app.navigation.PAGES`` as the sidebar's page list: every script
    of ``pages/`` once, Home first, in the order a person works (no file left out or doubled)."""
    from app import navigation

    paths = [path for path, _title, _icon in navigation.PAGES]
    titles = [title for _path, title, _icon in navigation.PAGES]
    assert titles == ["Home", "Data", "Train", "Compare", "Predict", "Run"]
    assert len(set(paths)) == len(paths) and paths[0] == navigation.HOME
    assert sorted(paths) == sorted(str(p.relative_to(ROOT)) for p in _modules(PAGES))
    assert len(navigation.pages()) == len(titles)


def test_every_page_runs_inside_the_router_first() -> None:
    """A ``pages/`` folder puts Streamlit in its old folder mode until ``st.navigation`` ran once:
    each page script's first statement hands over to the router (``through_router``)."""
    for path in _modules(PAGES):
        body = [n for n in ast.parse(path.read_text()).body
                if not isinstance(n, (ast.Import, ast.ImportFrom, ast.Assign, ast.Expr))
                or (isinstance(n, ast.Expr) and isinstance(n.value, ast.Call))]  # fmt: skip
        first = ast.unparse(body[0]) if body else ""
        assert first == "navigation.through_router()", f"{path.name} starts with {first!r}"


def test_the_server_process_never_trains(tmp_path) -> None:
    """The dashboard's queue (process mode) only writes queued runs and starts a worker process:
    in a fresh interpreter, submitting, resuming and stopping through it with the dashboard's
    widgets loaded never imports the trainer, Keras or TensorFlow. That is why Streamlit's
    cleanup after each script run (``keras.backend.clear_session()``, ``gc.collect()``) is left
    as it is: none of its functions replaced, its runner settings left at their defaults.
    """
    import inspect
    import subprocess
    import sys
    import tomllib

    code = f"""
import json, sys
import app.loaders, app.monitor, app.navigation, app.widgets
from core.config import RunConfig
from core.training import jobs
started = []
class Fake:
    pid = 0
def spawn(root, parent=None, slot=None):
    started.append(str(root))
    return Fake()
jobs.spawn_worker = spawn
queue = jobs.get_job_queue({str(tmp_path)!r}, processes=True)
run_id = queue.submit(RunConfig(data="builtin:textures", epochs=1))
pending = queue.pending()
queue.stop(run_id)
queue.resume(run_id)
print(json.dumps({{
    "pending": pending == [run_id], "started": len(started),
    "stopped": queue.store.status(run_id) == "queued",
    "loaded": [m for m in ("core.training.trainer", "keras", "tensorflow") if m in sys.modules],
}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts["loaded"] == [], "the server process must not load the trainer"
    assert facts["pending"] and facts["stopped"]
    assert facts["started"] >= 1, "a worker process is started for the queued run"

    from streamlit.runtime.scriptrunner import script_runner

    import app.loaders
    import app.monitor
    import app.widgets  # noqa: F401

    replaced = [
        name
        for name, value in vars(script_runner).items()
        if inspect.isfunction(value)
        and value.__module__ != script_runner.__name__
        and value.__module__.split(".")[0] in {"app", "core"}
    ]
    assert replaced == [], "Streamlit's script runner must be left as it is"
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert "runner" not in config, "the runner's settings (its cleanup after a run) stay default"
    assert not any(
        name in {"execute_run", "core.training.trainer"} or name.endswith(".execute_run")
        for path in _modules(APP) + _modules(PAGES)
        for name in _imports(path)
    ), "no page or widget imports the trainer"


def test_the_router_menu_is_shown() -> None:
    """``st.navigation`` draws the page menu only if the server config lets the sidebar show it."""
    import tomllib

    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config.get("client", {}).get("showSidebarNavigation", True) is True


@pytest.mark.slow
def test_following_a_run_keeps_tensorflow_out_of_the_server(tmp_path) -> None:
    """Home and Train (the pages that follow a run) render without importing Keras or
    TensorFlow: with them loaded, Streamlit's cleanup after every 2-s poll
    (``keras.backend.clear_session()`` and ``gc.collect(2)``) cost ~0.2 s of CPU on the cores
    the worker trains on. And once a page did load them, the server freezes what is alive
    (``navigation.freeze_long_lived``), so a collection no longer walks TensorFlow's objects."""
    import subprocess
    import sys

    code = """
import gc, json, sys
from streamlit.testing.v1 import AppTest
at = AppTest.from_file("streamlit_app.py", default_timeout=120).run()
for page in ("pages/home.py", "pages/train.py"):
    at.switch_page(page).run()
errors = [e.value for e in at.exception]
loaded = [m for m in ("keras", "tensorflow") if m in sys.modules]
import keras  # what Predict or Run does
frozen_before = gc.get_freeze_count()
at.switch_page("pages/home.py").run()
print(json.dumps({"errors": errors, "loaded": loaded,
                  "froze": gc.get_freeze_count() > frozen_before}))
"""
    env = {**os.environ, "TRANSFER_STUDIO_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts["errors"] == [] and facts["loaded"] == []
    assert facts["froze"], "the objects TensorFlow brought are frozen at the next script run"
