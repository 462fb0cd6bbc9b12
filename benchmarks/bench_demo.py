"""Where the demo's time goes: per-rule wall and CPU seconds, threads, the critical path, the total.

Runs the README's main job (``snakemake --cores N results/brats_timm.json`` on config.yaml's demo)
in a fresh folder, or profiles a run that already happened (``--workdir``), from Snakemake's own
records: each job's benchmark file (``results/<dataset>/benchmarks/...``: wall ``s``, ``cpu_time``,
``max_rss``) and the run's log (``.snakemake/log/*.snakemake.log``: each job's start and end,
inputs, outputs, threads).

    python benchmarks/bench_demo.py                      # fresh demo run on 2 cores, then the profile
    python benchmarks/bench_demo.py --workdir DIR        # profile the last run in DIR
    python benchmarks/bench_demo.py --cores 2 --config tests/configs/tiny.yaml --target results/brats_timm.json

The **critical path** is the chain of jobs that decided the end time: from the last job back,
each step to the input job that finished last; ``wait`` is the time a job's inputs were ready
but it had not started (cores busy). Beside the absolute time it prints bench_dag's bare-Snakemake
DAG time for 2,416 jobs on this machine (machines here differ up to 2x), and the held-out Dice.

Output: the tables and benchmarks/out/demo/bench_demo.json. Exit 1 if the run fails or, with
``--target-s``, takes longer.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out" / "demo"


@dataclass
class Job:
    """One job of a Snakemake log."""

    jobid: str
    rule: str
    start: float
    end: float | None = None
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    threads: int = 1
    benchmark: str | None = None


def _stamp(line: str) -> float | None:
    m = re.match(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$", line.strip())
    return datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y").timestamp() if m else None


def parse_log(path: Path) -> dict[str, Job]:
    """Every job of a Snakemake log: rule, start, end, inputs, outputs, threads, benchmark file."""
    jobs: dict[str, Job] = {}
    now, current = 0.0, None
    for line in path.read_text().splitlines():
        if (t := _stamp(line)) is not None:
            now, current = t, None
            continue
        s = line.strip()
        if m := re.match(r"^(?:local)?(?:rule|checkpoint) (\w+):$", s):
            current = Job("", m.group(1), now)
        elif current is not None and (m := re.match(r"^(input|output|jobid|threads|benchmark): (.*)$", s)):
            key, value = m.groups()
            if key == "jobid":
                current.jobid = value
                jobs[value] = current
            elif key in ("input", "output"):
                setattr(current, key + "s", [v.strip() for v in value.split(",") if v.strip()])
            elif key == "threads":
                current.threads = int(value)
            else:
                current.benchmark = value
        elif m := re.match(r"^Finished jobid: (\d+)", s):
            if m.group(1) in jobs:
                jobs[m.group(1)].end = now
    return jobs


def read_benchmark(path: Path) -> dict[str, float]:
    with open(path) as f:
        row = next(csv.DictReader(f, delimiter="\t"))
    return {k: float(row[k]) for k in ("s", "cpu_time", "max_rss") if row.get(k) not in (None, "", "NA", "-")}


def per_rule(jobs: dict[str, Job], workdir: Path) -> list[dict]:
    """Per rule: jobs, threads, wall (log; benchmark file when it has one) and CPU seconds, peak RSS."""
    rows: dict[str, dict] = defaultdict(lambda: {"n": 0, "wall_s": 0.0, "cpu_s": 0.0, "max_rss_mb": 0.0,
                                                 "threads": 1, "timed": 0})
    for job in jobs.values():
        r = rows[job.rule]
        r["n"] += 1
        r["threads"] = max(r["threads"], job.threads)
        bench = workdir / job.benchmark if job.benchmark else None
        if bench is not None and bench.exists():
            b = read_benchmark(bench)
            r["wall_s"] += b.get("s", 0.0)
            r["cpu_s"] += b.get("cpu_time", 0.0)
            r["max_rss_mb"] = max(r["max_rss_mb"], b.get("max_rss", 0.0))
            r["timed"] += 1
        elif job.end is not None:
            r["wall_s"] += job.end - job.start
    return sorted(({"rule": k, **v} for k, v in rows.items()), key=lambda r: -r["wall_s"])


def critical_path(jobs: dict[str, Job]) -> list[dict]:
    """The chain of jobs that decided the end: from the last job back, each time to the producer of
    one of its inputs that finished last (a directory output counts for the files in it)."""
    producers: list[tuple[str, str]] = [(o, j.jobid) for j in jobs.values() for o in j.outputs]
    done = [j for j in jobs.values() if j.end is not None]
    if not done:
        return []
    job, chain = max(done, key=lambda j: j.end), []
    while job is not None:
        deps = {jid for i in job.inputs for o, jid in producers if i == o or i.startswith(o.rstrip("/") + "/")}
        deps = [jobs[d] for d in deps if d != job.jobid and jobs[d].end is not None]
        prev = max(deps, key=lambda j: j.end) if deps else None
        chain.append({"rule": job.rule, "jobid": job.jobid, "s": job.end - job.start,
                      "wait_s": job.start - prev.end if prev else 0.0})
        job = prev
    return chain[::-1]


def run_demo(workdir: Path, cores: int, configs: list[str], target: str) -> tuple[int, float]:
    cfg = ["--configfile", str(REPO / "config.yaml"), *[str(REPO / c) for c in configs]]
    cmd = [str(Path(sys.executable).with_name("snakemake")), "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(workdir), *cfg, "--cores", str(cores), target]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        print(r.stderr[-3000:], file=sys.stderr)
    return r.returncode, time.perf_counter() - t0


def bare_dag_seconds(jobs: int = 2416) -> float | None:
    """bench_dag's peer: the dry run of a bare Snakemake DAG of ``jobs`` jobs (this machine's speed)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_dag import bare_dry_run  # noqa: E402

    with tempfile.TemporaryDirectory() as tmp:
        return bare_dry_run(Path(tmp), jobs)


def dice(workdir: Path, target: str) -> dict[str, float]:
    res = json.loads((workdir / target).read_text())
    section = res.get("regions") or res.get("labels") or {}
    return {k: round(v["dice"]["mean"], 4) for k, v in section.items()}


def report(workdir: Path, elapsed: float | None, target: str) -> dict:
    logs = sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"))
    if not logs:
        raise SystemExit(f"no Snakemake log in {workdir}/.snakemake/log")
    jobs = parse_log(logs[-1])
    rules, chain = per_rule(jobs, workdir), critical_path(jobs)
    starts = [j.start for j in jobs.values()]
    ends = [j.end for j in jobs.values() if j.end is not None]
    span = max(ends) - min(starts) if ends else 0.0
    print(f"{'rule':22} {'jobs':>5} {'threads':>7} {'wall s':>9} {'CPU s':>9} {'s/job':>7} {'peak MB':>8}")
    for r in rules:
        print(f"{r['rule']:22} {r['n']:5d} {r['threads']:7d} {r['wall_s']:9.1f} {r['cpu_s']:9.1f} "
              f"{r['wall_s'] / r['n']:7.1f} {r['max_rss_mb']:8.0f}")
    print(f"\ncritical path ({len(chain)} jobs, {sum(c['s'] for c in chain):.0f} s running, "
          f"{sum(c['wait_s'] for c in chain):.0f} s waiting for cores):")
    for c in chain:
        print(f"  {c['rule']:22} {c['s']:7.0f} s" + (f"  (waited {c['wait_s']:.0f} s)" if c["wait_s"] > 0 else ""))
    out = {"workdir": str(workdir), "jobs": len(jobs), "span_s": span, "elapsed_s": elapsed, "rules": rules,
           "critical_path": chain}
    if (workdir / target).exists():
        out["dice"] = dice(workdir, target)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=None, help="profile the last run in this folder (no new run)")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--config", nargs="*", default=[], help="extra config files (repo-relative), on top of config.yaml")
    ap.add_argument("--target", default="results/brats_timm.json")
    ap.add_argument("--target-s", type=float, default=None, help="fail when the run takes longer (seconds)")
    ap.add_argument("--no-peer", action="store_true", help="skip the bare-Snakemake reference time")
    a = ap.parse_args(argv)
    elapsed, code = None, 0
    workdir = a.workdir
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="medseg-demo-"))
        print(f"running the demo in {workdir} on {a.cores} cores ...", flush=True)
        code, elapsed = run_demo(workdir, a.cores, a.config, a.target)
    out = report(workdir, elapsed, a.target)
    out["bare_dag_2416_jobs_s"] = None if a.no_peer else bare_dag_seconds()
    total = elapsed if elapsed is not None else out["span_s"]
    peer = f"; bare Snakemake DAG of 2,416 jobs {out['bare_dag_2416_jobs_s']:.1f} s" if out["bare_dag_2416_jobs_s"] else ""
    print(f"\ntotal {total:.0f} s ({total / 60:.1f} min) on {a.cores} cores, {out['jobs']} jobs; "
          f"held-out Dice {out.get('dice')}{peer}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bench_demo.json").write_text(json.dumps(out, indent=1))
    if code or (a.target_s is not None and total > a.target_s):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
