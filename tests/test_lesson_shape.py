"""The lesson's shape (README, "Learn it in this order"): no import circle between tinyitop's modules,
no function on the reading path over 40 lines, no layer method over 25."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "tinyitop")
READING_PATH = ["demos/itop_from_scratch.py", "demos/one_update.py"] + [
    f"tinyitop/{name}.py" for name in ("topology", "explore", "sparse", "train", "methods", "layers", "im2col",
                                      "blocks", "losses", "optim", "init", "models", "sparse_kernels", "fused",
                                      "threads")]


def _imports(path, modules):
    """The tinyitop modules a file imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tinyitop":
            parts = node.module.split(".")
            found |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("tinyitop.")}
    return found


def test_no_import_circle_between_tinyitop_modules():
    modules = {name[:-3] for name in os.listdir(PACKAGE) if name.endswith(".py") and name != "__init__.py"}
    graph = {m: _imports(os.path.join(PACKAGE, m + ".py"), modules) - {m, "__init__"} for m in modules}
    for start in sorted(graph):
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for dep in graph.get(node, ()):
                assert dep != start, "import circle: " + " -> ".join(path + [dep])
                if dep not in path:
                    stack.append((dep, path + [dep]))


def _functions(path):
    tree = ast.parse(open(os.path.join(ROOT, path), encoding="utf-8").read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    yield f"{node.name}.{item.name}", item
        elif isinstance(node, ast.FunctionDef):
            yield node.name, node


def test_no_function_on_the_reading_path_over_40_lines():
    long = [f"{path}: {name} ({node.end_lineno - node.lineno + 1} lines)" for path in READING_PATH
            for name, node in _functions(path) if node.end_lineno - node.lineno + 1 > 40]
    assert not long, long


def test_no_layer_method_over_25_lines():
    long = [f"{name} ({node.end_lineno - node.lineno + 1} lines)" for name, node in _functions("tinyitop/layers.py")
            if "." in name and node.end_lineno - node.lineno + 1 > 25]
    assert not long, long
