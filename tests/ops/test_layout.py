"""The layout's rules, read from the code's own imports: the product never imports the
lab, maskattn_ops never imports the host, and only nodes/patching.py touches
model_options; and maskattn_ops imports with no host at all."""
import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PRODUCT = [REPO / "__init__.py", *sorted((REPO / "nodes").glob("*.py")), *sorted((REPO / "maskattn_ops").glob("*.py"))]
HOST_MODULES = {"comfy", "comfy_api", "comfy_extras", "folder_paths", "nodes", "execution", "server"}


def imported(path: Path) -> set[str]:
    """Absolute module names a file imports (relative imports resolved in this repo)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                names.add(node.module)
            else:
                base = path.parent
                for _ in range(node.level - 1):
                    base = base.parent
                names.add(".".join([*base.relative_to(REPO).parts, *(node.module or "").split(".")]).strip("."))
    return names


def test_the_product_never_imports_the_lab():
    for path in PRODUCT:
        lab = [name for name in imported(path) if name.split(".")[0] == "maskattn_lab" or name.startswith("scripts")]
        assert not lab, (path.relative_to(REPO), lab)


def test_maskattn_ops_never_imports_the_host():
    for path in sorted((REPO / "maskattn_ops").glob("*.py")):
        host = [name for name in imported(path) if name.split(".")[0] in HOST_MODULES]
        assert not host, (path.relative_to(REPO), host)


def touches_model_options(path: Path) -> list[str]:
    """Code (not comments or docstrings) that reads model_options or its keys."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "model_options":
            found.append(f"line {node.lineno}: .model_options")
        elif (isinstance(node, ast.Constant) and id(node) not in docstrings
              and node.value in ("transformer_options", "patches_replace", "model_options")):
            found.append(f"line {node.lineno}: {node.value!r}")
    return found


def test_only_patching_touches_model_options():
    for path in PRODUCT:
        if path.name != "patching.py" and path.parent.name == "nodes":
            assert not touches_model_options(path), (path.relative_to(REPO), touches_model_options(path))
    assert touches_model_options(REPO / "nodes" / "patching.py")      # the reader exists, and is seen


def test_maskattn_ops_imports_without_a_host():
    """In a fresh interpreter with no host on the path: every module of maskattn_ops loads."""
    modules = [f"comfyui_maskattn.maskattn_ops.{p.stem}" for p in sorted((REPO / "maskattn_ops").glob("*.py"))
               if p.stem != "__init__"]
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "assert not [m for m in sys.modules if m.split('.')[0] in ('comfy', 'folder_paths')], 'host imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr[-2000:]
