"""One iteration of EDPCNN's Algorithm 2 (Nguyen & Ray): the synthetic-gradient network ``F`` fitted
to the DP of noisy costs, then the U-Net trained through ``F``; the optimisers of Sec. 3.3."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from medseg.models.edpcnn import EDPCNN
from medseg.models.star_dp import mask_to_star_indices

def make_optimizers(model: EDPCNN) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """Adam for the U-Net and Adam for ``F`` (Sec. 3.3: beta = (0.9, 0.999), no weight decay)."""
    c = model.cfg
    return (torch.optim.Adam(model.unet.parameters(), lr=c.lr, betas=(0.9, 0.999)),
            torch.optim.Adam(model.sg.parameters(), lr=c.sg_lr, betas=(0.9, 0.999)))



def training_centres(masks: torch.Tensor, jitter: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """Star centres ``(B, 2)`` for masks ``(B, H, W)``: a uniform random pixel of each mask
    (``jitter``) or its centre of mass; the image centre for an empty mask."""
    b, h, w = masks.shape
    flat = masks.reshape(b, -1).float().cpu()
    out = torch.empty((b, 2))
    for i in range(b):
        if flat[i].sum() == 0:
            out[i] = torch.tensor([(h - 1) / 2, (w - 1) / 2])
        elif jitter:
            k = int(torch.multinomial(flat[i], 1, generator=generator))
            out[i] = torch.tensor([k // w, k % w], dtype=torch.float32)
        else:
            pts = torch.nonzero(flat[i].reshape(h, w)).float()
            out[i] = pts.mean(0)
    return out.to(masks.device)



def _sg_ce(logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Cross entropy of ``F``'s per-ray softmax ``(B, N, M)`` against indices ``(B, N)``."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), idx.reshape(-1).long())



def fit_sg(model: EDPCNN, cost: torch.Tensor, opt_sg: torch.optim.Optimizer,
           generator: torch.Generator | None = None) -> tuple[float, float]:
    """Algorithm 2's inner loop: fit ``F`` to ``DP(g + sigma eps_s)`` for ``S`` noise samples.

    Args:
        cost: ``(B, N, M)`` radial cost of the current maps (detached here).

    Returns:
        ``F``'s cross entropy against the DP targets at the first and at the last step.
    """
    c = model.cfg
    b, n, m = cost.shape
    g = cost.detach()
    eps = torch.randn((b, c.noise_samples, n, m), generator=generator).to(g.device)
    noisy = (g[:, None] + c.noise_sigma * eps).reshape(b * c.noise_samples, n, m)
    target = torch.round(model.dp_indices(noisy)).clamp(0, m - 1).long()  # F mimics the post-processed DP
    model.sg.train()
    first = last = math.nan
    for step in range(c.sg_steps):
        loss = _sg_ce(model.sg(noisy), target)
        opt_sg.zero_grad(set_to_none=True)
        loss.backward()
        opt_sg.step()
        last = float(loss.detach())
        if step == 0:
            first = last
    return first, last



def train_step(model: EDPCNN, x: torch.Tensor, masks: torch.Tensor, opt_unet: torch.optim.Optimizer,
               opt_sg: torch.optim.Optimizer, generator: torch.Generator | None = None) -> dict[str, float]:
    """One iteration of Algorithm 2 on a batch.

    Args:
        x: images ``(B, C, H, W)``.
        masks: binary targets ``(B, H, W)`` (one star-shaped object per image). Images whose
            mask is empty (slices without the object, drawn by the workflow's trainer) train only
            the centre loss; ``F`` and the synthetic loss use the others (none: no DP this step).
        opt_unet, opt_sg: from :func:`make_optimizers`.
        generator: torch RNG for centres, rotations and exploration noise (CPU).

    Returns:
        ``sg_loss_first``/``sg_loss`` (F vs DP, first and last inner step), ``sg_gt_loss``
        (``CE(F(g), p_gt)``, the U-Net's synthetic loss), ``centre_loss`` and ``loss``.
    """
    c = model.cfg
    model.train()
    maps = model.unet(x)[:, 0]  # (B, H, W)
    masks = masks.to(maps.device)
    centres = training_centres(masks, c.centre_jitter, generator)
    angles = (torch.rand(len(x), generator=generator) * 2 - 1).to(maps.device) * c.angle_jitter
    has = masks.reshape(len(masks), -1).any(1)
    if bool(has.all()):
        sub_maps, sub_masks, sub_centres, sub_angles = maps, masks, centres, angles
    else:
        sub_maps, sub_masks, sub_centres, sub_angles = maps[has], masks[has], centres[has], angles[has]
    if len(sub_maps):
        cost = model.cost(sub_maps, sub_centres, sub_angles)
        sg_first, sg_last = fit_sg(model, cost, opt_sg, generator)
        gt = mask_to_star_indices(sub_masks, sub_centres, c.n_rays, c.n_points, c.radius_px, sub_angles)
        model.sg.eval()  # as the authors: F's batch-norm statistics are not updated by the outer step
        for p in model.sg.parameters():
            p.requires_grad_(False)
        try:
            sg_gt = _sg_ce(model.sg(cost), gt)
        finally:
            for p in model.sg.parameters():
                p.requires_grad_(True)
    else:
        sg_first = sg_last = math.nan
        sg_gt = maps.sum() * 0
    centre_loss = F.binary_cross_entropy_with_logits(maps, masks.float()) if c.centre_loss_weight > 0 else maps.sum() * 0
    loss = sg_gt + c.centre_loss_weight * centre_loss
    opt_unet.zero_grad(set_to_none=True)
    loss.backward()
    opt_unet.step()
    return {"sg_loss_first": sg_first, "sg_loss": sg_last, "sg_gt_loss": float(sg_gt.detach()),
            "centre_loss": float(centre_loss.detach()), "loss": float(loss.detach())}
