"""Build each ``envs/*.yaml``'s pinned packages in a fresh venv with pip and run that family's code in it.

Conda channels cannot be reached everywhere, so the conda pins are mapped to their PyPI names at the
same versions (``numpy=2.2`` -> ``numpy==2.2.*``; ``pytorch`` -> ``torch``, ``matplotlib-base`` ->
``matplotlib``, ...). In each venv the script then

1. imports every medseg module and every third-party module that the family's workflow scripts
   import (directly or through medseg, also inside functions: the closure of ``tests/test_envs.py``),
2. runs that family's smoke tests (``FAMILY_TESTS``, fast unit tests of the code its rules run).

Usage (about 10-30 min and a few GB of downloads, the train env being the largest):
    python scripts/check_envs.py [--work /tmp/medseg-envs] [--keep] [preprocess train evaluate]
Exit status 0 when every env built and passed; a summary line per env is printed at the end.
Not part of the unit test suite (it downloads packages); run it after changing an env file.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

CONDA_TO_PYPI = {"pytorch": "torch", "matplotlib-base": "matplotlib", "simpleitk": "SimpleITK"}
SKIP = {"python", "pip"}
TEST_PACKAGES = ("pytest", "hypothesis")  # what the family tests need besides the env
# fast tests of the code each family's rules run (need pytest; run with the family's packages only)
FAMILY_TESTS = {
    "preprocess.yaml": ["tests/test_io.py", "tests/test_n4_skullstrip.py", "tests/test_qc.py", "tests/test_synth.py"],
    "train.yaml": ["tests/test_stitch_inference.py", "tests/test_models.py"],
    "evaluate.yaml": ["tests/test_evaluate_case.py", "tests/test_instancewise.py", "tests/test_plots.py"],
}


def pip_specs(env_file: Path) -> list[str]:
    """The env's packages as pip requirement strings at the same versions."""
    spec = yaml.safe_load(env_file.read_text())
    out = []
    for dep in spec["dependencies"]:
        if isinstance(dep, dict):
            out += dep.get("pip", [])
            continue
        name, _, version = dep.partition("=")
        if name in SKIP:
            if name == "python" and not f"{sys.version_info.major}.{sys.version_info.minor}".startswith(version):
                print(f"warning: {env_file.name} pins python {version}, this is {sys.version.split()[0]}")
            continue
        version = version.lstrip("=")
        out.append(f"{CONDA_TO_PYPI.get(name, name)}=={version}" + (".*" if version.count(".") < 2 else ""))
    return out


def modules_of_family(env_name: str) -> tuple[list[str], list[str]]:
    """(medseg modules, third-party top-level modules) imported by the scripts whose rules use ``env_name``."""
    import test_envs

    medseg_mods, third = set(), set()
    for script, env in test_envs.rule_envs().items():
        if env != env_name:
            continue
        path = REPO / "workflow" / "scripts" / script
        third |= test_envs.third_party_closure(path)
        todo, seen = [path], set()
        while todo:
            f = todo.pop()
            if f in seen:
                continue
            seen.add(f)
            for name in test_envs.imports_of(f):
                if name.split(".")[0] == "medseg" and (mf := test_envs.module_file(name)) is not None:
                    medseg_mods.add(name)
                    todo.append(mf)
    return sorted(medseg_mods), sorted(third)


def check(env_file: Path, work: Path, keep: bool) -> tuple[bool, str]:
    venv = work / env_file.stem
    shutil.rmtree(venv, ignore_errors=True)
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    specs = pip_specs(env_file)
    print(f"== {env_file.name}: pip install {' '.join(specs)}", flush=True)
    r = subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", *specs, *TEST_PACKAGES])
    if r.returncode:
        return False, f"pip install failed ({time.time() - t0:.0f} s)"
    built = time.time() - t0
    medseg_mods, third = modules_of_family(env_file.name)
    code = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in [*third, *medseg_mods])
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": f"{venv / 'bin'}:/usr/bin:/bin", "OMP_NUM_THREADS": "1",
           "MEDSEG_TRACKING": "0"}
    r = subprocess.run([py, "-c", code], env=env, capture_output=True, text=True)
    if r.returncode:
        return False, f"import failed: {r.stderr.strip().splitlines()[-1]}"
    tests = FAMILY_TESTS.get(env_file.name, [])
    r = subprocess.run([py, "-m", "pytest", "-q", "-x", "-m", "not slow", "-p", "no:cacheprovider", *tests],
                       cwd=REPO, env=env, capture_output=True, text=True)
    last = (r.stdout.strip().splitlines() or ["(no output)"])[-1]
    if not keep:
        shutil.rmtree(venv, ignore_errors=True)
    ok = r.returncode == 0
    return ok, (f"built in {built:.0f} s; imported {len(third)} third-party + {len(medseg_mods)} medseg modules; "
                f"tests: {last}" + ("" if ok else "\n" + r.stdout[-3000:]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("envs", nargs="*", default=["preprocess", "train", "evaluate"], help="env files (stems) to check")
    ap.add_argument("--work", type=Path, default=Path("/tmp/medseg-envs"), help="folder for the venvs")
    ap.add_argument("--keep", action="store_true", help="keep the venvs after checking")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    results = {}
    for stem in a.envs:
        results[stem] = check(REPO / "envs" / f"{stem}.yaml", a.work, a.keep)
        print(f"{stem}: {'OK' if results[stem][0] else 'FAILED'}: {results[stem][1]}", flush=True)
    print("\nsummary:")
    for stem, (ok, msg) in results.items():
        print(f"  {stem}: {'OK' if ok else 'FAILED'}: {msg.splitlines()[0]}")
    return 0 if all(ok for ok, _ in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
