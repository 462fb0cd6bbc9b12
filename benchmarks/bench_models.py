"""Held-out Dice of every model on the BraTS demo, in one table: the 2.5-D timm U-Net next to the
seed 3-D networks (unet3d, tiramisu3d, factorized_unet).

Runs the workflow itself (same preprocessing, split, tiles, training, stitched inference and
evaluation for every model: only the ``models.<key>`` differ) for ``results/<dataset>_<model>.json``
and reads the numbers back from the results files::

    python benchmarks/bench_models.py                      # config.yaml: 16 cases at 2 mm, all four models
    python benchmarks/bench_models.py --quick              # tests/configs/tiny.yaml: 5 cases, 12 steps (smoke)
    python benchmarks/bench_models.py --configfile my.yaml --models timm unet3d --cores 8
    python benchmarks/bench_models.py --table-only --workdir DIR   # the table of an earlier run

Columns: parameters, training steps, patch, loss and blending actually used (from the model's
``model.pt``; the blending is the model's default, what ``inference.mode: null`` uses), best validation Dice, held-out (test split) mean Dice per region and its mean,
training wall time (Snakemake's benchmark file). Output: the table on stdout and
``<workdir>/bench_models.json``. Exit status 1 if a workflow run fails.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = ("timm", "unet3d", "tiramisu3d", "factorized_unet")


def run_workflow(workdir: Path, dataset: str, models: list[str], configs: list[str], cores: int) -> None:
    targets = [f"results/{dataset}_{m}.json" for m in models]
    cfg = ["--configfile", str(REPO / "config.yaml"), *configs]
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           *cfg, "--cores", str(cores), "--show-failed-logs", *targets]
    print("+", " ".join(cmd), flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    if subprocess.run(cmd, env=env).returncode:
        sys.exit(1)


def model_row(workdir: Path, dataset: str, model: str) -> dict:
    import torch

    from medseg.models.checkpoint import load_model

    res = json.loads((workdir / f"results/{dataset}_{model}.json").read_text())
    fold = workdir / f"results/{dataset}/models/{model}/fold_0"
    ck = torch.load(fold / "model.pt", map_location="cpu", weights_only=True)
    meta = ck["meta"]
    mc = meta["model_config"]
    row = {"model": model, "arch": mc["arch"], "params": sum(v.numel() for k, v in ck["state_dict"].items()
                                                             if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))),
           "steps": meta["steps"], "loss": meta.get("loss", "dice_bce"), "context": meta["context"],
           "patch": "x".join(map(str, mc.get("patch_size") or [])) or "slice",
           "blending": getattr(load_model(fold / "model.pt")[0], "default_blending", "gaussian"),
           "best_val_dice": meta["best"]["dice_mean"], "n_test": res["n_cases"]}
    regions = res.get("regions") or {}
    dices = {r: v["dice"]["mean"] for r, v in regions.items()}
    if not dices:  # label tasks
        dices = {r: v["dice"]["mean"] for r, v in (res.get("labels") or {}).items()}
    row.update({f"dice_{r}": d for r, d in dices.items()})
    row["dice_mean"] = sum(dices.values()) / max(len(dices), 1)
    tsv = workdir / f"results/{dataset}/benchmarks/train_model/{model}_0.tsv"
    if tsv.exists():
        with open(tsv) as f:
            row["train_s"] = float(next(csv.DictReader(f, delimiter="\t"))["s"])
    return row


def print_table(rows: list[dict]) -> None:
    regions = [k[5:] for k in rows[0] if k.startswith("dice_") and k != "dice_mean"] if rows else []
    head = ["model", "arch", "params", "steps", "patch", "loss", "blending", "val Dice", *regions, "test mean", "n", "train s"]
    lines = [head]
    for r in rows:
        lines.append([r["model"], r["arch"], f"{r['params']:,}", str(r["steps"]), r["patch"], r["loss"], r["blending"],
                      f"{r['best_val_dice']:.3f}", *(f"{r.get(f'dice_{g}', float('nan')):.3f}" for g in regions),
                      f"{r['dice_mean']:.3f}", str(r["n_test"]), f"{r.get('train_s', float('nan')):.0f}"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    for i, line in enumerate(lines):
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=REPO / "benchmarks/out/models")
    ap.add_argument("--dataset", default="brats")
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--configfile", nargs="*", default=[], help="extra config files (after config.yaml)")
    ap.add_argument("--quick", action="store_true", help="add tests/configs/tiny.yaml (a smoke run, Dice meaningless)")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--table-only", action="store_true", help="do not run the workflow; tabulate what is there")
    args = ap.parse_args()
    configs = [str(Path(c).resolve()) for c in args.configfile]
    if args.quick:
        configs.insert(0, str(REPO / "tests/configs/tiny.yaml"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        run_workflow(args.workdir, args.dataset, args.models, configs, args.cores)
    rows = [model_row(args.workdir, args.dataset, m) for m in args.models]
    print_table(rows)
    (args.workdir / "bench_models.json").write_text(json.dumps({"dataset": args.dataset, "configs": configs,
                                                                "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
