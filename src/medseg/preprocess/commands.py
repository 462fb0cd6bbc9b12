"""CLI: ``medseg n4``, ``medseg register``, ``medseg skullstrip`` on plain files."""
from __future__ import annotations

import argparse


def _n4(a: argparse.Namespace) -> int:
    from medseg.io import read_image, write_image
    from medseg.preprocess.n4 import N4Config, n4_correct

    img = read_image(a.image)
    mask = read_image(a.mask) if a.mask else None
    cfg = N4Config(shrink_factor=a.shrink, **({"mask": "otsu", "tissue_prior": False} if a.no_atlas else {}))
    corrected, field = n4_correct(img, mask, cfg)
    write_image(corrected, a.out)
    if a.bias_field:
        write_image(field, a.bias_field)
    return 0


def _register(a: argparse.Namespace) -> int:
    import SimpleITK as sitk

    from medseg.io import atomic_path, read_image, write_image
    from medseg.preprocess.register import RegConfig, register

    fixed, moving = read_image(a.fixed), read_image(a.moving)
    grid = {"bspline_grid_mm": a.grid_mm} if a.grid_mm else {}
    tfm = register(fixed, moving, a.kind, RegConfig(backend=a.backend, **grid))
    write_image(sitk.Resample(moving, fixed, tfm, sitk.sitkLinear, 0.0, sitk.sitkFloat32), a.out)
    with atomic_path(a.transform) as tmp:
        sitk.WriteTransform(tfm, str(tmp))
    return 0


def _skullstrip(a: argparse.Namespace) -> int:
    from medseg.io import read_image, write_image
    from medseg.preprocess.skullstrip import SkullstripConfig, skullstrip

    write_image(skullstrip(read_image(a.image), SkullstripConfig(method=a.method)), a.out_mask)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("n4", help="N4 bias-field correction of one image")
    p.add_argument("image")
    p.add_argument("--out", required=True)
    p.add_argument("--mask", help="fitting mask (default: the ICBM152 brain mask registered to IMAGE)")
    p.add_argument("--bias-field", help="also write the estimated bias field here")
    p.add_argument("--shrink", type=int, default=None,
                   help="subsampling factor for fitting (default: fit on a grid of about 8 mm)")
    p.add_argument("--no-atlas", action="store_true",
                   help="classic N4: fit in the Otsu head mask (or --mask) without the atlas tissue prior")
    p.set_defaults(func=_n4)

    p = sub.add_parser("register", help="register MOVING onto FIXED (mutual information)")
    p.add_argument("moving")
    p.add_argument("fixed")
    p.add_argument("--out", required=True, help="MOVING resampled onto FIXED's grid")
    p.add_argument("--transform", required=True,
                   help="ITK transform file (.tfm or .h5): fixed world -> moving world "
                        "(bspline: a composite of the affine and the B-spline)")
    p.add_argument("--kind", default="rigid", choices=["rigid", "affine", "bspline"],
                   help="bspline = affine, then a cubic B-spline warp")
    p.add_argument("--grid-mm", type=float, help="B-spline control point spacing in mm (--kind bspline; default 50)")
    p.add_argument("--backend", default="sitk", choices=["sitk", "elastix"])
    p.set_defaults(func=_register)

    p = sub.add_parser("skullstrip", help="brain mask of a head image")
    p.add_argument("image")
    p.add_argument("--out-mask", required=True)
    p.add_argument("--method", default="atlas", choices=["atlas", "robex", "nonzero"])
    p.set_defaults(func=_skullstrip)
