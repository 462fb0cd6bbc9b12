"""A model bundle (:mod:`medseg.inference.bundle`) as an MLflow pyfunc model.

The syncer (:mod:`medseg.tracking.sync`) logs each bundle the workflow exports as the ``model``
of its ``export_bundle`` run, with the medseg source as code, so that::

    model = mlflow.pyfunc.load_model("runs:/<run id>/model")
    label_map = model.predict({"t1": "t1.nii.gz", "t1ce": ..., "t2": ..., "flair": ...})

segments a new case from its raw scans exactly as ``medseg predict`` does. Only the syncer and
users loading models import this module (it imports mlflow).
"""
from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow.pyfunc

log = logging.getLogger(__name__)

REQUIREMENTS = ("torch", "torchvision", "timm", "numpy", "scipy", "SimpleITK", "itk-elastix", "nibabel", "nilearn",
                "pyyaml", "jsonschema", "tqdm", "zarr")


def _cases(model_input: Any) -> list[dict[str, str]]:
    """``{modality: path}`` (one case), a list of them, or a DataFrame with one row per case."""
    if hasattr(model_input, "to_dict"):  # pandas DataFrame: columns = modalities (+ optional "case")
        return [{str(k): str(v) for k, v in row.items()} for row in model_input.to_dict(orient="records")]
    if isinstance(model_input, Mapping):
        return [{str(k): str(v) for k, v in model_input.items()}]
    if isinstance(model_input, (list, tuple)) and all(isinstance(r, Mapping) for r in model_input):
        return [{str(k): str(v) for k, v in r.items()} for r in model_input]
    raise ValueError(f"model input must be {{modality: scan path}}, a list of them or a DataFrame, got {type(model_input).__name__}")


class BundleModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of a bundle: ``predict`` takes a case's raw scan paths, returns its label map.

    Input: ``{modality: path}`` (the bundle task's modalities; an optional ``case`` key names the
    case), a list of such dicts, or a DataFrame with one row per case. Output: the label map as an
    int array in the scan's native array layout (z, y, x) for one case; a list of them otherwise.
    ``params={"output_dir": DIR}`` also writes ``DIR/<case>.nii.gz``.
    """

    def load_context(self, context) -> None:
        self.bundle = context.artifacts["bundle"]

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        import SimpleITK as sitk

        from medseg.inference.predict import predict_raw

        single = isinstance(model_input, Mapping)
        out_dir = (params or {}).get("output_dir")
        maps = []
        for i, case in enumerate(_cases(model_input)):
            name = case.pop("case", None) or f"case_{i}"
            with tempfile.TemporaryDirectory(prefix="medseg-pyfunc-") as tmp:
                out = Path(out_dir or tmp) / f"{name}.nii.gz"
                out.parent.mkdir(parents=True, exist_ok=True)
                predict_raw(name, case, self.bundle, out)
                maps.append(sitk.GetArrayFromImage(sitk.ReadImage(str(out))))
        return maps[0] if single else maps


def requirements() -> list[str]:
    from medseg.tracking.provenance import package_versions

    return [f"{n}=={v}" if v else n for n, v in package_versions(REQUIREMENTS).items()]


def log_bundle(run_id: str, bundle_dir: str | Path, registered_name: str | None = None) -> str:
    """Log ``bundle_dir`` as the pyfunc model ``model`` of run ``run_id`` (in the current tracking
    store); register it as ``registered_name`` if given. Returns the model URI."""
    import mlflow

    from medseg.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    src = Path(__file__).resolve().parent
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(name="model", python_model=BundleModel(), artifacts={"bundle": str(bundle_dir)},
                                       code_paths=[str(src)], pip_requirements=requirements(),
                                       registered_model_name=registered_name)
    log.info("model bundle %s logged as %s%s", bundle_dir, info.model_uri,
             f" (registered as {registered_name})" if registered_name else "")
    return info.model_uri
