"""How long Snakemake takes to build the DAG of a 1,000-case BraTS dataset (target: <= 15 s).

Builds fake BraTS folders (empty placeholder files: building the DAG must never read an image)
in the 2021 and 2023 layouts, writes a config pointing ``datasets.brats.source`` at each
(the README's BraTS setting: register/skullstrip off; ``--all-steps``: on; 5 folds), and times
``snakemake -n results/brats_timm.json``.

    python benchmarks/bench_dag.py                 # both layouts, 1,000 cases
    python benchmarks/bench_dag.py --profile       # + cProfile: where the time goes
    python benchmarks/bench_dag.py --cases 200 --layout 2021

Peer: a bare Snakemake workflow with the same number of jobs (one rule per job kind would not
change it much: two rules, one output, one log each), dry-run in the same way just before. Its
time is Snakemake's floor for that many jobs on this machine; the ratio says how much the
workflow's files per job and input functions add on top (``--no-peer`` skips it).

Output: one line per layout (seconds, jobs in the DAG, ratio to the bare DAG) and
benchmarks/out/dag/bench_dag.json. Exit status 1 if a dry run fails or takes longer than
--target seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import pstats
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUFFIXES = {
    "2021": {"t1": "_t1", "t1ce": "_t1ce", "t2": "_t2", "flair": "_flair", "seg": "_seg"},
    "2023": {"t1": "-t1n", "t1ce": "-t1c", "t2": "-t2w", "flair": "-t2f", "seg": "-seg"},
}
CASE_PREFIX = {"2021": "BraTS2021_", "2023": "BraTS-GLI-"}


def snakemake_cmd() -> list[str]:
    """``$SNAKEMAKE`` if set (e.g. another Snakemake version), else the one next to this Python, else PATH's."""
    if os.environ.get("SNAKEMAKE"):
        return os.environ["SNAKEMAKE"].split()
    exe = Path(sys.executable).with_name("snakemake")
    return [str(exe)] if exe.exists() else ["snakemake"]


def fake_dataset(root: Path, layout: str, n_cases: int) -> Path:
    """``n_cases`` case folders of empty files in the BraTS ``layout`` ("2021" or "2023")."""
    data = root / f"BraTS{layout}_fake"
    for i in range(n_cases):
        case = f"{CASE_PREFIX[layout]}{i:05d}" + ("-000" if layout == "2023" else "")
        d = data / case
        d.mkdir(parents=True, exist_ok=True)
        for suffix in SUFFIXES[layout].values():
            (d / f"{case}{suffix}.nii.gz").touch()
    return data


BARE_SNAKEFILE = """
N = int(config["n"])
rule all:
    input: expand("out/{c}.b", c=range(N // 2))
rule a:
    output: "out/{c}.a"
    log: "logs/a/{c}.log"
    shell: "touch {output}"
rule b:
    input: "out/{c}.a"
    output: "out/{c}.b"
    log: "logs/b/{c}.log"
    shell: "touch {output}"
"""


def bare_dry_run(root: Path, n_jobs: int) -> float:
    """Wall seconds of ``snakemake -n`` of a bare two-rule workflow with ``n_jobs`` jobs."""
    d = root / "bare"
    d.mkdir(exist_ok=True)
    (d / "Snakefile").write_text(BARE_SNAKEFILE)
    (d / "config.yaml").write_text(json.dumps({"n": n_jobs}))
    t0 = time.perf_counter()
    proc = subprocess.run([*snakemake_cmd(), "-n", "--cores", "1", "--quiet", "rules", "--configfile", "config.yaml"],
                          cwd=d, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"bare dry run failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return seconds


def write_config(path: Path, source: Path, n_folds: int, all_steps: bool = False) -> Path:
    """The README's BraTS setting (no registration or skull stripping: BraTS comes co-registered and
    skull-stripped), or with ``all_steps`` the whole chain as for raw clinical scans."""
    cfg = {
        "datasets": {
            "brats": {
                "source": str(source),
                "convention": "auto",
                "steps": {"n4": True, "register": all_steps, "skullstrip": all_steps},
                "split": {"n_folds": n_folds, "test_fraction": 0.2, "val_fraction": 0.15, "seed": 0},
            }
        }
    }
    path.write_text(json.dumps(cfg, indent=2))  # JSON is YAML
    return path


def dry_run(config: Path, workdir: Path, profile_to: Path | None = None) -> tuple[float, float, int, str]:
    """Wall and CPU seconds of ``snakemake -n results/brats_timm.json``, jobs in the DAG, and the output.

    CPU seconds (user + system of the snakemake process) equal the wall time of an idle machine
    (building the DAG is single-threaded); on a busy machine the wall time is larger.
    """
    args = ["results/brats_timm.json", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(REPO / "config.yaml"), str(config), "-n", "--quiet", "rules"]
    if profile_to is not None:
        cmd = [sys.executable, "-m", "cProfile", "-o", str(profile_to), "-m", "snakemake", *args]
    else:
        cmd = [*snakemake_cmd(), *args]
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"dry run failed ({' '.join(cmd)}):\n{out[-3000:]}")
    m = re.search(r"^total\s+(\d+)", out, re.M)
    return seconds, cpu, int(m.group(1)) if m else -1, out


def report_profile(prof: Path, top: int = 25) -> None:
    """Print the slowest functions, then those of the workflow's own code (common.smk, medseg)."""
    stats = pstats.Stats(str(prof))
    stats.sort_stats("cumulative")
    print(f"\n--- cProfile {prof}: top {top} by cumulative time")
    stats.print_stats(top)
    print("--- workflow code only (workflow/rules/*.smk, src/medseg)")
    stats.print_stats(r"(\.smk|medseg)", top)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--layout", choices=["2021", "2023", "both"], default="both")
    ap.add_argument("--target", type=float, default=15.0, help="seconds; slower is a failure")
    ap.add_argument("--profile", action="store_true", help="also run each dry run under cProfile")
    ap.add_argument("--no-peer", action="store_true", help="skip the bare Snakemake DAG of the same size")
    ap.add_argument("--all-steps", action="store_true",
                    help="register and skull-strip too (raw clinical scans), not the BraTS setting")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "dag")
    a = ap.parse_args(argv)

    a.out.mkdir(parents=True, exist_ok=True)
    layouts = ["2021", "2023"] if a.layout == "both" else [a.layout]
    results, ok = [], True
    with tempfile.TemporaryDirectory(prefix="medseg-bench-dag-") as tmp:
        tmp = Path(tmp)
        for layout in layouts:
            t0 = time.perf_counter()
            data = fake_dataset(tmp, layout, a.cases)
            make_s = time.perf_counter() - t0
            work = tmp / f"work_{layout}"
            work.mkdir()
            cfg = write_config(tmp / f"bench_{layout}.yaml", data, a.folds, a.all_steps)
            seconds, cpu, n_jobs, _ = dry_run(cfg, work)
            bare = None if a.no_peer else bare_dry_run(tmp, n_jobs)
            fast = seconds <= a.target
            ok &= fast
            peer = "" if bare is None else f"; bare Snakemake DAG of {n_jobs} jobs {bare:.1f} s, ratio {seconds / bare:.2f}"
            steps = "all steps" if a.all_steps else "BraTS steps"
            print(f"BraTS {layout} layout, {a.cases} cases, {a.folds} folds, {steps}: snakemake -n results/brats_timm.json "
                  f"{seconds:.1f} s wall ({cpu:.1f} s CPU), {n_jobs} jobs ({'OK' if fast else 'SLOWER THAN'} target "
                  f"{a.target:g} s{peer}; fake folder {make_s:.1f} s; load average {os.getloadavg()[0]:.1f})")
            results.append({"layout": layout, "cases": a.cases, "folds": a.folds, "all_steps": a.all_steps,
                            "seconds": round(seconds, 2),
                            "cpu_seconds": round(cpu, 2), "jobs": n_jobs, "target_s": a.target,
                            "bare_snakemake_s": None if bare is None else round(bare, 2),
                            "load_average": round(os.getloadavg()[0], 2)})
            if a.profile:
                prof = a.out / f"bench_dag_{layout}.prof"
                dry_run(cfg, work, profile_to=prof)
                report_profile(prof)
    (a.out / "bench_dag.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
