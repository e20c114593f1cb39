"""The package's layers, checked on the source: no import cycles (imports inside functions included: a cycle hidden
in a function is still a cycle), the device layer imports nothing from `tortoise`, the networks nothing from the
pipeline or the front ends, the graph backends and the exporter nothing from the pipeline or the front ends, the
pipeline core nothing from the front ends, and no front end from another (they share `tortoise.flags`)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tortoise", "xpu")
FRONT_ENDS = ("tortoise.flags", "tortoise.cli", "tortoise.webui", "tortoise.server", "tortoise.distributed",
              "tortoise.get_conditioning_latents", "tortoise.is_this_from_tortoise", "tortoise.export.cli",
              "tortoise.export.__main__",
              "tortoise.voices.cli", "tortoise.voices.__main__", "tortoise.original_scripts", "tortoise.do_tts",
              "tortoise.read", "tortoise.read_fast")
CORE = ("tortoise.api", "tortoise.api_fast", "tortoise.pipeline", "tortoise.loading", "tortoise.render",
        "tortoise.options", "tortoise.progress", "tortoise.session", "tortoise.placement")
GRAPHS = ("tortoise.backends", "tortoise.export")  # below the core: the pipeline loads networks from them
# Front ends that stand on another on purpose (one way only: the cycle test forbids the way back): the original's
# scripts run tortoise-tts's own command line under their names; tortoise-tts --ray and tortoise-server --ray run
# the Ray reader and Ray Serve; `python -m tortoise.voices` is tortoise-voices.
FRONT_END_TIES = {("tortoise.original_scripts", "tortoise.cli"), ("tortoise.do_tts", "tortoise.original_scripts"),
                  ("tortoise.read", "tortoise.original_scripts"), ("tortoise.read_fast", "tortoise.original_scripts"),
                  ("tortoise.cli", "tortoise.distributed"), ("tortoise.server", "tortoise.distributed"),
                  ("tortoise.voices.__main__", "tortoise.voices.cli"),
                  ("tortoise.export.__main__", "tortoise.export.cli")}


def module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules():
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def imports(path, name, known):
    """Every project module ``name`` imports, anywhere in the file."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def graph():
    known = modules()
    return {name: imports(path, name, known) for name, path in known.items()}


def in_layer(name, prefixes):
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_no_import_cycles():
    g = graph()
    state, stack, cycles = {}, [], []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(g[n]):
            if state.get(m) == "open":
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = "done"

    for n in sorted(g):
        if n not in state:
            visit(n)
    # a package's __init__ re-exporting its own modules is not a cycle between layers
    cycles = [c for c in cycles if not all(x == c[0] or x.startswith(c[0] + ".") for x in c)]
    assert cycles == []


def test_no_cycles_between_packages():
    """One level up: the subpackages (tortoise.utils, tortoise.voices, tortoise.backends, tortoise.export, ...) and
    top-level modules import each other one way only, imports inside functions counted."""
    def package(name):
        return ".".join(name.split(".")[:2])
    edges = {(package(n), package(m)) for n, deps in graph().items() for m in deps if package(n) != package(m)}
    assert sorted((a, b) for a, b in edges if (b, a) in edges) == []


def test_device_layer_imports_nothing_from_tortoise():
    g = graph()
    assert {n: sorted(m for m in deps if m.startswith("tortoise")) for n, deps in g.items()
            if n.startswith("xpu") and any(m.startswith("tortoise") for m in deps)} == {}


def test_networks_and_core_do_not_reach_up():
    g = graph()
    bad = {}
    for n, deps in g.items():
        if n.startswith(("tortoise.models", "tortoise.utils")):
            up = [m for m in deps if in_layer(m, CORE + FRONT_ENDS)]
        elif in_layer(n, GRAPHS) and not in_layer(n, ("tortoise.export.cli", "tortoise.export.__main__")):
            # below the core: the backends load graphs through the exporter, nothing reaches the pipeline
            up = [m for m in deps if in_layer(m, CORE + FRONT_ENDS)]
        elif in_layer(n, CORE):
            up = [m for m in deps if in_layer(m, FRONT_ENDS)]
        else:
            continue
        if up:
            bad[n] = sorted(up)
    assert bad == {}


def front_end_of(name):
    """The front end ``name`` belongs to (the longest listed prefix), or None."""
    owners = [f for f in FRONT_ENDS if name == f or name.startswith(f + ".")]
    return max(owners, key=len) if owners else None


def test_front_ends_stand_beside_each_other_not_on_each_other():
    bad = {}
    for n, deps in graph().items():
        mine = front_end_of(n)
        if mine is None:
            continue
        others = {front_end_of(m) for m in deps} - {None, mine, "tortoise.flags"}
        others = {o for o in others if (mine, o) not in FRONT_END_TIES}
        if others:
            bad[n] = sorted(others)
    assert bad == {}


def test_the_layer_lists_name_modules_that_exist():
    known = modules()
    stale = [name for name in FRONT_ENDS + CORE + GRAPHS
             if name not in known and not any(m.startswith(name + ".") for m in known)]
    assert not stale, f"the layer lists name modules that do not exist: {stale}"
