"""The package's three layers: the library, the notebook steps (notebook/), the runners (runners/)."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "qlora_helpers"
LAYERS = {"library": PACKAGE, "notebook": PACKAGE / "notebook", "runners": PACKAGE / "runners"}
RANK = {"library": 0, "notebook": 1, "runners": 2}  # a layer may import only layers of a lower rank or its own


def modules(folder: Path) -> set[str]:
    return {path.stem for path in folder.glob("*.py") if path.stem != "__init__"}


def layer_of(dotted: str) -> str:
    """The layer of an absolute module name inside qlora_helpers."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ("notebook", "runners") else "library"


def imported_modules(path: Path) -> set[str]:
    """Every qlora_helpers module `path` imports (absolute or relative), as an absolute name."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("qlora_helpers")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            if base.startswith("qlora_helpers"):
                found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def test_each_layer_imports_only_itself_and_the_layers_below():
    wrong = []
    for layer, folder in LAYERS.items():
        for path in sorted(folder.glob("*.py")):
            for name in imported_modules(path):
                if RANK[layer_of(name)] > RANK[layer]:
                    wrong.append(f"{path.relative_to(ROOT)} ({layer}) imports {name}")
    assert not wrong, "a layer imports one above it:\n" + "\n".join(wrong)


def test_the_guide_lists_every_module_under_its_layer():
    readme = (ROOT / "docs" / "guide.md").read_text()
    section = readme.split("## The helper package\n", 1)[1].split("\n## ", 1)[0]
    listed: dict[str, set[str]] = {}
    layer = None
    for row in re.findall(r"^\| (.+?) \|", section, re.M):
        heading = re.search(r"`(qlora_helpers/[a-z_/]*)`", row)
        if heading:
            folder = ROOT / heading.group(1)
            layer = next(name for name, path in LAYERS.items() if path == folder.resolve())
            listed[layer] = set()
        elif layer is not None and row.startswith("`"):
            listed[layer] |= set(re.findall(r"`(\w+)`", row))
    assert listed == {name: modules(folder) for name, folder in LAYERS.items()}


def test_one_helper_each_for_4bit_weights_and_for_unwrapping_peft():
    """modeling.is_packed_4bit and modeling.base_model are the only copies of these two checks."""
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "bench").glob("*.py"), *(ROOT / "tests").rglob("*.py")]:
        if path.name != "modeling.py" and path != Path(__file__).resolve():
            text = path.read_text()
            assert "Params4bit" not in text, f"{path.name}: use modeling.is_packed_4bit"
            assert "get_base_model()" not in text, f"{path.name}: use modeling.base_model"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """qlora_helpers module -> the qlora_helpers modules it imports, at module level or inside a
    function (`from .x import name` counts as importing module x; a package's name, its __init__)."""
    known = {module_name(path) for path in PACKAGE.rglob("*.py")}

    def resolve(name: str) -> str:
        while name not in known:
            name = name.rsplit(".", 1)[0]
        return name

    return {module_name(path): {resolve(name) for name in imported_modules(path)} - {module_name(path)}
            for path in PACKAGE.rglob("*.py")}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle (its modules, the first repeated at the end), or [] if there is none."""
    state: dict[str, str] = {}  # module -> "open" while its imports are walked, then "done"

    def walk(module: str, path: list[str]) -> list[str]:
        state[module] = "open"
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == "open":
                return path[path.index(imported):] + [module, imported]
            if imported not in state and (cycle := walk(imported, path + [module])):
                return cycle
        state[module] = "done"
        return []

    return next((cycle for module in sorted(graph) if module not in state and (cycle := walk(module, []))), [])


def test_find_cycle_sees_a_circle_through_three_modules():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_no_import_circle_in_the_package():
    graph = import_graph()
    assert "qlora_helpers.training" in graph["qlora_helpers.notebook.experiment"]  # the walk sees imports
    cycle = find_cycle(graph)
    assert not cycle, "an import circle: " + " -> ".join(cycle)
