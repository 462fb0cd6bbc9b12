"""Speed and accuracy of medseg's sliding-window stitching against MONAI's, on the same model.

Runs one small fully convolutional net over the same image, patch, overlap and batch size through
``medseg.stitch.sliding_window_inference`` and ``monai.inferers.sliding_window_inference``
(both ``mode="gaussian"``) and reports, per case:

* speed ratio = MONAI time / medseg time (>= 1 means medseg is at least as fast);
* each one's max abs error against the untiled forward pass of the whole image;
* each one's overhead over the bare forward passes = (total - time inside the predictor) / total.

medseg is run twice: plain, and with ``margin`` = the net's receptive-field radius (window
borders off the image border get weight 0), which makes it equal the untiled pass exactly.
Timings are the best of ``--repeats`` interleaved runs, 1 torch thread by default, so that other
load on the machine disturbs the comparison as little as possible.

Usage: ``PYTHONPATH=src python benchmarks/bench_stitch.py [--repeats 3] [--cases 2d 3d]``
"""
from __future__ import annotations

import argparse
import logging
import time

import torch
from monai.inferers import sliding_window_inference as monai_swi

from medseg.stitch.inference import sliding_window_inference

log = logging.getLogger("bench_stitch")

CASES = {  # name: (image shape (C, *spatial), patch, overlap, batch size)
    "2d": ((1, 1024, 1024), (128, 128), 0.5, 8),
    "3d": ((1, 128, 128, 128), (64, 64, 64), 0.5, 2),
}


RF_RADIUS = 3


def make_net(ndim: int, channels: int = 16, out: int = 2) -> torch.nn.Module:
    """Three conv3x3 layers (receptive field 7, radius 3), zero padded."""
    conv = torch.nn.Conv2d if ndim == 2 else torch.nn.Conv3d
    torch.manual_seed(0)
    return torch.nn.Sequential(conv(1, channels, 3, padding=1), torch.nn.ReLU(),
                               conv(channels, channels, 3, padding=1), torch.nn.ReLU(),
                               conv(channels, out, 3, padding=1)).eval()


class Timed:
    """Predictor wrapper that sums the wall time spent inside the model."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.net, self.seconds, self.calls = net, 0.0, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        y = self.net(x)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return y


def run_case(name: str, repeats: int) -> dict[str, float]:
    shape, patch, overlap, batch = CASES[name]
    net = make_net(len(patch))
    image = torch.rand(shape)
    with torch.inference_mode():
        reference = net(image[None])[0]

    def ours(predictor, margin=0):
        return sliding_window_inference(image, predictor, patch, overlap=overlap, mode="gaussian", batch_size=batch,
                                        backend="memory", margin=margin)

    def ours_margin(predictor):  # drop the receptive-field radius at inner window borders: exact stitching
        return ours(predictor, margin=RF_RADIUS)

    def theirs(predictor):
        with torch.inference_mode():
            return monai_swi(image[None], patch, batch, predictor, overlap=overlap, mode="gaussian",
                             sigma_scale=0.125)[0]

    runners = {"medseg": ours, "medseg_margin": ours_margin, "monai": theirs}
    best = {label: (float("inf"), 0.0, 0, None) for label in runners}
    for label, fn in runners.items():
        fn(net)  # warm-up
    for _ in range(repeats):  # interleaved, best of n: robust to other load on the machine
        for label, fn in runners.items():
            timed = Timed(net)
            t0 = time.perf_counter()
            out = fn(timed)
            elapsed = time.perf_counter() - t0
            if elapsed < best[label][0]:
                best[label] = (elapsed, timed.seconds, timed.calls, out)
    results: dict[str, float] = {}
    for label, (elapsed, inside, calls, out) in best.items():
        results[f"{label}_s"] = elapsed
        results[f"{label}_overhead"] = (elapsed - inside) / elapsed
        results[f"{label}_max_err"] = float((out - reference).abs().max())
        results[f"{label}_calls"] = calls
    results["speed_ratio"] = results["monai_s"] / results["medseg_s"]
    results["speed_ratio_margin"] = results["monai_s"] / results["medseg_margin_s"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch default); 1 is steadiest")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    log.info("torch %s, %d threads", torch.__version__, torch.get_num_threads())
    for name in args.cases:
        shape, patch, overlap, batch = CASES[name]
        r = run_case(name, args.repeats)
        log.info("%s image %s patch %s overlap %s batch %d", name, shape, patch, overlap, batch)
        for label in ("medseg", "medseg_margin", "monai"):
            log.info("  %-14s %.3f s, %d predictor calls, stitching %.0f ms = overhead %.1f %%, max err vs untiled %.2e",
                     label, r[f"{label}_s"], r[f"{label}_calls"], 1e3 * r[f"{label}_s"] * r[f"{label}_overhead"],
                     100 * r[f"{label}_overhead"], r[f"{label}_max_err"])
        log.info("  speed ratio (monai time / medseg time) %.3f; with margin=%d %.3f", r["speed_ratio"], RF_RADIUS,
                 r["speed_ratio_margin"])


if __name__ == "__main__":
    main()
