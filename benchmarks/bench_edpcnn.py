"""EDPCNN vs the same U-Net alone with 10, 30 and all labelled training slices (Nguyen & Ray, Fig. 3 / Table 1).

Data: any labelled dataset folder medseg reads (``--source``: BraTS, nnU-Net raw, Decathlon,
ACDC, PROMISE12; the layout is detected) and one object of its task (``--object``: a label or a
region, resolved by :func:`medseg.inference.edpcnn.resolve_object` as the workflow's trainer does;
default the largest region, BraTS WT, or the union of the labels). Without ``--source``: the demo
BraTS cohort (``medseg.cohort.synth``, 2 mm), FLAIR and T2, whole tumour. Each case is read in the
working orientation (LPS), optionally resampled in plane to ``--pixel-mm`` (slices kept: ACDC's
5-10 mm short-axis slices stay slices), z-scored where its first modality is > 0, cropped/padded to
``--crop`` pixels around the centre of that region and resized to ``--size``; slices
whose object has at least ``--min-area`` pixels are kept. Split by case (by patient for ACDC: the
ED and ES frames together): held-out cases are never seen in training. Training sets are
telescopic (one shuffle of the training slices, the first 10, 30, all: ``--n-labelled``), as in
Sec. 3.5. Both models share the same U-Net (timm resnet10t encoder), batch size, iteration count
and learning rate; the U-Net alone is trained with Dice + BCE, EDPCNN with Algorithm 2
(synthetic gradients through the DP).

Reported (mean Dice over held-out slices, the object):

* ``unet``: sigmoid > 0.5, the whole mask;
* ``unet_cc``: the paper's fair protocol (Sec. 3.2): only the connected component holding the
  ground-truth centroid (else the largest);
* ``edpcnn``: star centre from the U-Net's own output (no ground truth at inference), the
  model's default ``centre_method="midrange"``;
* ``edpcnn_thr``: the same with ``centre_method="threshold"`` (map > 0);
* ``edpcnn_gtc``: star centre = ground-truth centroid (the paper's protocol, Sec. 3.2).

Deviations from the paper's protocol (Sec. 3.3, 3.5), for a few CPU minutes: 150 iterations
(paper 20,000) at learning rate 1e-3 (paper 1e-4) for both networks; ``S = 2`` noise samples and
3 inner steps of ``F`` (paper 10 and 10); no model selection on validation Dice (the paper keeps
the best of checkpoints evaluated every 50 iterations); ``M = R = 24`` px (paper 65 px at 1.37 mm).

Run: ``PYTHONPATH=src python benchmarks/bench_edpcnn.py [--cases 16 --test-cases 5 --iters 300]``
(the demo); ACDC: ``... --source <ACDC>/training --object LV --pixel-mm 2.74 --crop 80 --size 80``.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage as ndi

from medseg.cohort.listing import CaseListing, list_cases
from medseg.cohort.sources import read_source
from medseg.cohort.synth import SynthConfig, generate_cohort
from medseg.inference.edpcnn import StarObject, resolve_object
from medseg.io import read_labels
from medseg.plan.recipe import WORKING_ORIENTATION
from medseg.preprocess.stages import resample_to_spacing
from medseg.tasks.layouts.base import GROUP_KEY
from medseg.training.losses import dice_bce
from medseg.models.edpcnn import EDPCNN, EDPCNNConfig
from medseg.training.edpcnn_step import make_optimizers, train_step
from medseg.models.star_dp import largest_component_centre
from medseg.models.unet import ModelConfig, TimmUNet

log = logging.getLogger("bench_edpcnn")
DEMO_MODALITIES = ("flair", "t2")


def _working(img: sitk.Image, pixel_mm: float | None, interpolator: int) -> np.ndarray:
    """``(Z, Y, X)`` in the working orientation (LPS), in plane at ``pixel_mm`` when given."""
    img = sitk.DICOMOrient(img, WORKING_ORIENTATION)
    if pixel_mm is not None:
        img = resample_to_spacing(img, (pixel_mm, pixel_mm, None), interpolator)
    return sitk.GetArrayFromImage(img)


def _crop(arr: np.ndarray, centre: tuple[int, int], size: int) -> np.ndarray:
    """``(..., Y, X)`` -> ``(..., size, size)`` around ``centre``, zero padded."""
    out = np.zeros(arr.shape[:-2] + (size, size), arr.dtype)
    y0, x0 = centre[0] - size // 2, centre[1] - size // 2
    ys, xs = max(y0, 0), max(x0, 0)
    ye, xe = min(y0 + size, arr.shape[-2]), min(x0 + size, arr.shape[-1])
    out[..., ys - y0: ye - y0, xs - x0: xe - x0] = arr[..., ys:ye, xs:xe]
    return out


@dataclasses.dataclass(frozen=True)
class SliceSpec:
    """How slices are cut from a case (see the module doc)."""

    modalities: tuple[str, ...]
    obj: StarObject
    pixel_mm: float | None = None
    crop: int = 96
    size: int = 64
    min_area: int = 30


def case_slices(listing: CaseListing, case: str, spec: SliceSpec) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(S, C, size, size)`` float32 and object masks ``(S, size, size)`` uint8 of one case:
    a ``crop`` x ``crop`` window around the centre of the first modality's region > 0, resized to ``size``
    (area average; masks: average > 0.5)."""
    chans = [_working(read_source(listing.raw(case, m), case, listing.channel(case, m)), spec.pixel_mm,
                      sitk.sitkLinear).astype(np.float32) for m in spec.modalities]
    labels = _working(read_labels(listing.raw(case, "seg"), case=case), spec.pixel_mm, sitk.sitkNearestNeighbor)
    target = listing.task.encode(labels)
    target = np.swapaxes(target, 0, 1) if target.ndim == 4 else target[:, None]  # (Z, T, Y, X)
    mask = spec.obj.mask(target).astype(np.uint8)
    head = chans[0] > 0  # the head / body: where the first modality has signal
    for c in chans:
        v = c[head]
        c[...] = np.where(head, (c - v.mean()) / (v.std() + 1e-6), 0.0)
    yx = np.argwhere(head.any(0))
    centre = tuple(((yx.min(0) + yx.max(0)) // 2).tolist())
    img = torch.from_numpy(_crop(np.stack(chans, 1), centre, spec.crop))  # (Z, C, crop, crop)
    msk = torch.from_numpy(_crop(mask, centre, spec.crop)).float()[:, None]
    if spec.size != spec.crop:
        img = torch.nn.functional.interpolate(img, size=(spec.size, spec.size), mode="area")
        msk = torch.nn.functional.interpolate(msk, size=(spec.size, spec.size), mode="area")
    img, msk = img.numpy(), (msk[:, 0] > 0.5).numpy().astype(np.uint8)
    keep = msk.reshape(len(msk), -1).sum(1) >= spec.min_area
    return img[keep], msk[keep]


def load(listing: CaseListing, cases: list[str], spec: SliceSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs, ys, ids = [], [], []
    for i, c in enumerate(cases):
        x, y = case_slices(listing, c, spec)
        xs.append(x), ys.append(y), ids.append(np.full(len(x), i))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ids)


def split_groups(listing: CaseListing, n_test: int, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """(test cases, training cases) of the labelled cases: ``n_test`` groups (patients; else cases)
    drawn by ``rng``, every case of a group on the same side."""
    labelled = sorted(c for c, f in listing.files.items() if f.seg is not None and c in listing.splits)
    group = {c: listing.files[c].meta.get(GROUP_KEY, c) for c in labelled}
    order = list(rng.permutation(sorted(set(group.values()))))
    cases = [[c for c in labelled if group[c] == g] for g in order]  # in the drawn order (telescopic sets)
    return [c for cs in cases[:n_test] for c in cs], [c for cs in cases[n_test:] for c in cs]


def _batches(n: int, batch: int, iters: int, rng: np.random.Generator):
    order = np.array([], int)
    for _ in range(iters):
        while len(order) < batch:
            order = np.concatenate([order, rng.permutation(n)]) if n >= batch else rng.choice(n, batch)
        idx, order = order[:batch], order[batch:]
        yield idx


def train_unet(cfg: ModelConfig, x: np.ndarray, y: np.ndarray, iters: int, batch: int, lr: float, seed: int) -> TimmUNet:
    torch.manual_seed(seed)
    net = TimmUNet(cfg)
    opt = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.999))
    net.train()
    for idx in _batches(len(x), batch, iters, np.random.default_rng(seed)):
        logits = net(torch.from_numpy(x[idx]))
        loss = dice_bce(logits, torch.from_numpy(y[idx])[:, None].float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net


def train_edpcnn(cfg: EDPCNNConfig, x: np.ndarray, y: np.ndarray, iters: int, batch: int, seed: int) -> tuple[EDPCNN, dict]:
    torch.manual_seed(seed)
    model = EDPCNN(cfg)
    opt_u, opt_sg = make_optimizers(model)
    gen = torch.Generator().manual_seed(seed)
    last = {}
    for idx in _batches(len(x), batch, iters, np.random.default_rng(seed)):
        last = train_step(model, torch.from_numpy(x[idx]), torch.from_numpy(y[idx]), opt_u, opt_sg, gen)
    return model, last


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


def gt_centres(y: np.ndarray) -> torch.Tensor:
    return torch.tensor([largest_component_centre(m.astype(bool)) for m in y], dtype=torch.float32)


def component_at(pred: np.ndarray, centre: tuple[float, float]) -> np.ndarray:
    """Sec. 3.2: the component of ``pred`` holding ``centre``, else the largest one."""
    lab, n = ndi.label(pred, structure=np.ones((3, 3), bool))
    if n == 0:
        return pred
    k = lab[int(round(centre[0])), int(round(centre[1]))]
    if k == 0:
        k = int(np.argmax(np.bincount(lab.ravel())[1:])) + 1
    return lab == k


@torch.no_grad()
def evaluate(unet: TimmUNet, edp: EDPCNN, x: np.ndarray, y: np.ndarray, batch: int = 32) -> dict[str, float]:
    unet.eval()
    yb = y.astype(bool)
    centres = gt_centres(y)
    scores: dict[str, list[float]] = {"unet": [], "unet_cc": [], "edpcnn": [], "edpcnn_thr": [], "edpcnn_gtc": []}
    edp_thr = copy.copy(edp)  # shares the weights; only the centre rule differs
    edp_thr.cfg = dataclasses.replace(edp.cfg, centre_method="threshold")
    for s in range(0, len(x), batch):
        xb = torch.from_numpy(x[s:s + batch])
        pu = (unet(xb)[:, 0] > 0).numpy()
        pe = edp.predict_mask(xb).numpy().astype(bool)
        pt = edp_thr.predict_mask(xb).numpy().astype(bool)
        pg = edp.predict_mask(xb, centres=centres[s:s + batch]).numpy().astype(bool)
        for i in range(len(xb)):
            t = yb[s + i]
            scores["unet"].append(dice(pu[i], t))
            scores["unet_cc"].append(dice(component_at(pu[i], tuple(centres[s + i].tolist())), t))
            scores["edpcnn"].append(dice(pe[i], t))
            scores["edpcnn_thr"].append(dice(pt[i], t))
            scores["edpcnn_gtc"].append(dice(pg[i], t))
    return {k: (float(np.mean(v)), float(np.std(v))) for k, v in scores.items()}


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", type=Path, default=None,
                    help="a labelled dataset folder (BraTS, nnU-Net raw, Decathlon, ACDC, PROMISE12); default: the demo")
    ap.add_argument("--object", default=None, help="label or region of the task (ACDC: LV); default: the largest "
                                                   "region (BraTS WT) or the union of the labels")
    ap.add_argument("--modalities", default=None, help="comma-separated input modalities (default: the task's; "
                                                       "the demo: flair,t2)")
    ap.add_argument("--pixel-mm", type=float, default=None, help="resample in plane to this pixel size (default: native)")
    ap.add_argument("--cases", type=int, default=16, help="demo cases generated (no --source)")
    ap.add_argument("--test-cases", type=int, default=5, help="held-out cases (patients for ACDC)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--crop", type=int, default=96, help="window around the centre of the signal (first modality > 0), pixels")
    ap.add_argument("--size", type=int, default=64, help="slice size after resizing the window (demo: 3 mm pixels)")
    ap.add_argument("--min-area", type=int, default=30, help="min object pixels of a kept slice (at --size)")
    ap.add_argument("--n-labelled", "--sizes", dest="sizes", default="10,30,all",
                    help="telescopic numbers of labelled training slices")
    ap.add_argument("--iters", type=int, default=150)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rays", type=int, default=50)
    ap.add_argument("--radius", type=int, default=24, help="star radius R = points per ray M (pixels)")
    ap.add_argument("--noise-samples", type=int, default=2, help="S (paper: 10; lowered for CPU time)")
    ap.add_argument("--sg-steps", type=int, default=3, help="inner steps of F (paper: 10; lowered for CPU time)")
    ap.add_argument("--cohort", type=Path, default=None, help="reuse a generated demo cohort directory")
    ap.add_argument("--json", type=Path, default=None, help="also write the table as JSON")
    return ap.parse_args(argv)


def _listing(args: argparse.Namespace) -> tuple[CaseListing, tempfile.TemporaryDirectory | None]:
    """The dataset's listing: ``--source``, else the demo cohort (generated unless ``--cohort`` holds it)."""
    if args.source is not None:
        return list_cases(args.source.name, {"source": str(args.source)}), None
    tmp, cohort = None, args.cohort
    if cohort is None or not (cohort / "cohort.json").exists():
        if cohort is None:
            tmp = tempfile.TemporaryDirectory(prefix="bench_edpcnn_")
            cohort = Path(tmp.name)
        generate_cohort(SynthConfig(n_cases=args.cases, seed=args.seed, spacing_mm=(2.0, 2.0, 2.0), anatomy="icbm",
                                    fov_variety=False), cohort, workers=2)
    return list_cases("demo", {"source": str(cohort / "images")}), tmp


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    t0 = time.perf_counter()
    listing, tmp = _listing(args)
    mods = tuple(args.modalities.split(",")) if args.modalities else (
        listing.modalities if args.source is not None else DEMO_MODALITIES)
    spec = SliceSpec(mods, resolve_object(listing.task, args.object, "--object"), args.pixel_mm, args.crop, args.size,
                     args.min_area)
    rng = np.random.default_rng(args.seed)
    test_cases, train_cases = split_groups(listing, args.test_cases, rng)
    xtr, ytr, _ = load(listing, train_cases, spec)
    xte, yte, _ = load(listing, test_cases, spec)
    perm = rng.permutation(len(xtr))  # telescopic sets: one shuffle, then prefixes (Sec. 3.5)
    xtr, ytr = xtr[perm], ytr[perm]
    log.info("data: %s, object %s: %d train slices (%d cases), %d test slices (%d cases); %.0f s", listing.root,
             spec.obj.name, len(xtr), len(train_cases), len(xte), len(test_cases), time.perf_counter() - t0)

    unet_cfg = ModelConfig(encoder="resnet10t", in_channels=len(mods), out_channels=1,
                           decoder_channels=(32, 24, 16, 16, 8))
    edp_cfg = EDPCNNConfig(unet=unet_cfg, n_rays=args.rays, n_points=args.radius, radius_px=float(args.radius),
                           noise_samples=args.noise_samples, sg_steps=args.sg_steps, lr=args.lr, sg_lr=args.lr)
    rows = []
    for tok in args.sizes.split(","):
        n = len(xtr) if tok == "all" else min(int(tok), len(xtr))
        t1 = time.perf_counter()
        unet = train_unet(unet_cfg, xtr[:n], ytr[:n], args.iters, args.batch, args.lr, args.seed)
        t_u = time.perf_counter() - t1
        edp, last = train_edpcnn(edp_cfg, xtr[:n], ytr[:n], args.iters, args.batch, args.seed)
        t_e = time.perf_counter() - t1 - t_u
        res = evaluate(unet, edp, xte, yte)
        rows.append({"n_train": n, **{k: v[0] for k, v in res.items()}, **{k + "_sd": v[1] for k, v in res.items()},
                     "unet_s": t_u, "edpcnn_s": t_e, "edpcnn_last": last})
        log.info("n=%d %s (U-Net %.0f s, EDPCNN %.0f s; last step %s)", n,
                 {k: round(v[0], 3) for k, v in res.items()}, t_u, t_e, {k: round(v, 3) for k, v in last.items()})

    print(f"\nEDPCNN vs U-Net, object {spec.obj.name} of {listing.root} ({args.crop} px window at "
          f"{args.size}x{args.size}), {len(xte)} held-out slices from {len(test_cases)} cases; "
          f"{args.iters} iterations x batch {args.batch}")
    print("Dice mean (sd)   unet = sigmoid>0.5; unet_cc = component at GT centroid (paper Sec. 3.2);")
    print("                 edpcnn = centre from U-Net output (midrange); edpcnn_thr = same, map > 0;")
    print("                 edpcnn_gtc = GT centre (paper's protocol)")
    cols = ("unet", "unet_cc", "edpcnn", "edpcnn_thr", "edpcnn_gtc")
    print(f"{'n_train':>8} | " + " | ".join(f"{c:>13}" for c in cols))
    for r in rows:
        cells = " | ".join(f"{r[k]:.3f} ({r[k + '_sd']:.3f})" for k in cols)
        print(f"{r['n_train']:>8} | {cells}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
