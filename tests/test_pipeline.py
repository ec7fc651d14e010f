"""dvc.yaml lists, for every stage, exactly the project modules its script imports (directly or not)."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def module_file(name: str) -> Path | None:
    path = SRC.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def imported(path: Path) -> set[str]:
    """The ``detox`` modules a file imports anywhere in it (lazy imports inside functions too)."""
    package = path.relative_to(SRC).with_suffix("").parts[:-1] if path.is_relative_to(SRC) else ()
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name.split(".")[0] == "detox"}
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                module = ".".join([*package[: len(package) - node.level + 1], *([module] if module else [])])
            if module.split(".")[0] != "detox":
                continue
            names.add(module)
            names |= {f"{module}.{alias.name}" for alias in node.names if module_file(f"{module}.{alias.name}")}
    return names


def closure(script: Path) -> set[str]:
    """Every file of ``src/`` that running ``script`` imports, package ``__init__`` files left out."""
    seen: set[str] = set()
    todo = list(imported(script))
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run first
        path = module_file(name)
        if path is not None:
            todo += list(imported(path))
    files = {module_file(name) for name in seen} - {None}
    return {f.relative_to(ROOT).as_posix() for f in files if f.name != "__init__.py"}


def listed(deps: list[str]) -> set[str]:
    files: set[str] = set()
    for dep in deps:
        path = ROOT / dep
        if dep.startswith("src/") and path.is_dir():
            files |= {p.relative_to(ROOT).as_posix() for p in path.rglob("*.py") if p.name != "__init__.py"}
        elif dep.startswith("src/"):
            files.add(dep)
    return files


def test_every_stage_depends_on_exactly_the_modules_it_imports():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    problems = []
    for name, stage in stages.items():
        script = f"stages/{name}.py"
        assert script in stage["deps"], f"{name}: its script {script} is not a dependency"
        needed, deps = closure(ROOT / script), listed(stage["deps"])
        if needed - deps:
            problems.append(f"{name}: imports but does not list {sorted(needed - deps)}")
        if deps - needed:
            problems.append(f"{name}: lists but never imports {sorted(deps - needed)}")
    assert not problems, "\n".join(problems)


def test_the_import_walk_sees_lazy_and_relative_imports(tmp_path):
    assert "src/detox/judges/ngram.py" in closure(ROOT / "stages" / "judges.py")  # imported inside a function
    assert "src/detox/common/params/schema.py" in closure(ROOT / "stages" / "fetch.py")  # through detox.data.fetch
    assert "src/detox/ppo/train.py" in closure(ROOT / "stages" / "ppo.py")
