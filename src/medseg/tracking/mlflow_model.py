"""A model bundle (:mod:`medseg.inference.bundle`) as an MLflow model: logged, registered, loadable.

The syncer (:mod:`medseg.tracking.sync`) logs each bundle the workflow exports as the MLflow
model ``<dataset>_<model>`` (:func:`medseg.tracking.model_name`, e.g. ``brats_timm``) of its
``export_bundle`` run, registers it under that name, and links the test scores of the
aggregation to it. The model carries a signature (input: one column per modality of the task,
plus an optional ``case``; output: the label map with its affine; param ``output_dir``), an
input example and the medseg source as code, so that::

    model = mlflow.pyfunc.load_model("models:/brats_timm/latest")
    out = model.predict({"case": "p01", "t1": "p01_t1.nii.gz", "t1ce": ..., "t2": ..., "flair": ...},
                        params={"output_dir": "predictions"})
    out.loc[0, "path"]                               # predictions/p01.nii.gz: overlays the scans
    labels, affine = out.loc[0, "labels"], out.loc[0, "affine"]
    nibabel.Nifti1Image(labels, affine)              # the same image, in memory

segments a new case from its raw scans exactly as ``medseg predict`` does. Only the syncer and
users loading models import this module (it imports mlflow).
"""
from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

log = logging.getLogger(__name__)

REQUIREMENTS = ("torch", "torchvision", "timm", "numpy", "scipy", "SimpleITK", "itk-elastix", "nibabel", "nilearn",
                "pandas", "pyyaml", "jsonschema", "tqdm", "zarr")
PACKAGE = Path(__file__).resolve().parents[1]  # src/medseg: the model's code, so it loads without medseg installed
ENTRY = Path(__file__).resolve().with_name("pyfunc_entry.py")  # the model-from-code file
OUTPUT_COLUMNS = ("case", "labels", "affine", "path")
OUTPUT_DIR = "output_dir"


def _present(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and str(v) != ""


def _cases(model_input: Any) -> list[dict[str, str]]:
    """``{modality: path}`` (one case), a list of them, or a DataFrame with one row per case."""
    if hasattr(model_input, "to_dict"):  # pandas DataFrame: columns = modalities (+ optional "case")
        rows = model_input.to_dict(orient="records")
    elif isinstance(model_input, Mapping):
        rows = [model_input]
    elif isinstance(model_input, (list, tuple)) and all(isinstance(r, Mapping) for r in model_input):
        rows = list(model_input)
    else:
        raise ValueError("model input must be {modality: scan path} (plus an optional 'case'), a list of them or a "
                         f"DataFrame with one row per case, got {type(model_input).__name__}")
    return [{str(k): str(v) for k, v in r.items() if _present(v)} for r in rows]


def _predict_case(name: str, scans: Mapping[str, str], bundle: str, out_dir: str | None) -> dict[str, Any]:
    """One case's row: the label map in NIfTI voxel order (i, j, k) with its 4x4 affine (voxel ->
    RAS+ world, mm; nibabel's convention), and the NIfTI written to ``out_dir`` if given."""
    import nibabel as nib
    import numpy as np

    from medseg.inference.predict import predict_raw

    with tempfile.TemporaryDirectory(prefix="medseg-pyfunc-") as tmp:
        out = Path(out_dir or tmp) / f"{name}.nii.gz"
        out.parent.mkdir(parents=True, exist_ok=True)
        predict_raw(name, scans, bundle, out)
        img = nib.load(str(out))
        return {"case": name, "labels": np.asarray(img.dataobj), "affine": np.asarray(img.affine),
                "path": str(out.resolve()) if out_dir else None}


class BundleModel(mlflow.pyfunc.PythonModel):
    """pyfunc face of a bundle: ``predict`` takes cases' raw scan paths, returns their label maps.

    Input: ``{modality: path}`` (the bundle task's modalities; ``case`` names the case), a list of
    them, or a DataFrame with one row per case. Output: a DataFrame, one row per case, columns
    ``case``, ``labels`` (int array in NIfTI voxel order (i, j, k)), ``affine`` (4x4, voxel -> RAS+
    world in mm: ``nibabel.Nifti1Image(labels, affine)`` is the label image on the scan's grid) and
    ``path``: with ``params={"output_dir": DIR}``, the NIfTI written to ``DIR/<case>.nii.gz`` (its
    header the scan's), else None.
    """

    def load_context(self, context) -> None:
        self.bundle = context.artifacts["bundle"]

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        out_dir = (params or {}).get(OUTPUT_DIR) or None
        rows = []
        for i, case in enumerate(_cases(model_input)):
            name = case.pop("case", None) or f"case_{i}"
            rows.append(_predict_case(name, case, self.bundle, out_dir))
        return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))


def requirements() -> list[str]:
    from medseg.tracking.provenance import package_versions

    return [f"{n}=={v}" if v else n for n, v in package_versions(REQUIREMENTS).items()]


def signature(modalities: tuple[str, ...] | list[str]):
    """The model's signature: one string column (a scan path) per modality and an optional
    ``case``; output ``case``, ``labels`` (3-D integer array), ``affine`` (4x4), ``path``; the
    ``output_dir`` param."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec("string", "case", required=False), *(ColSpec("string", m) for m in modalities)])
    outputs = Schema([ColSpec("string", "case"), ColSpec(Array(Array(Array("long"))), "labels"),
                      ColSpec(Array(Array("double")), "affine"), ColSpec("string", "path", required=False)])
    return ModelSignature(inputs, outputs, ParamSchema([ParamSpec(OUTPUT_DIR, "string", "")]))


def input_example(modalities: tuple[str, ...] | list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """One case's scans named as a user's files would be, and the ``output_dir`` param."""
    return {"case": "patient01", **{m: f"patient01_{m}.nii.gz" for m in modalities}}, {OUTPUT_DIR: "predictions"}


def model_params(bundle) -> dict[str, str]:
    """What the logged model says of itself: dataset, model key, task and network config."""
    task, run = bundle.plan.task, bundle.run
    params = {"dataset": bundle.plan.dataset, "model": bundle.model, "n_folds": bundle.n_folds,
              "modalities": ",".join(task.modalities), "labels": ",".join(f"{n}={v}" for n, v in task.labels.items()),
              "regions": ",".join(f"{r}={'+'.join(m)}" for r, m in task.regions.items()),
              "spatial_dims": run.spatial_dims, **{f"network.{k}": v for k, v in run.model.items()}}
    return {k: str(v)[:500] for k, v in params.items()}


def describe(bundle, name: str) -> str:
    """The registered model's description (Markdown)."""
    mods = ", ".join(f"`{m}`" for m in bundle.plan.task.modalities)
    return (f"medseg model bundle `{bundle.model}` trained on dataset `{bundle.plan.dataset}` "
            f"({bundle.n_folds} fold(s)). Input: one row per case, a scan path per modality ({mods}) and an "
            "optional `case`; output: `labels` (NIfTI voxel order) with its 4x4 `affine`, and with "
            f"`params={{\"output_dir\": DIR}}` the NIfTI `DIR/<case>.nii.gz` in `path`.\n\n"
            f"```python\nmodel = mlflow.pyfunc.load_model(\"models:/{name}/latest\")\n"
            f"out = model.predict({{\"case\": \"p01\", {', '.join(repr(m) + ': ...' for m in bundle.plan.task.modalities)}}},"
            " params={\"output_dir\": \"predictions\"})\n```")


def log_bundle(client, run_id: str, bundle_dir: str | Path, name: str, register: bool = True) -> str:
    """Log ``bundle_dir`` as the MLflow model ``name`` of run ``run_id`` (an output of the run, with its
    signature, input example, params and the medseg source); register it as ``name`` if ``register``.
    Returns the logged model's id.

    The input example names files only a user has, so it is checked against the signature, not run
    through the model (which ``mlflow.pyfunc.log_model`` would do: a whole segmentation).
    """
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import Model

    from medseg.inference.bundle import load_bundle

    bundle = load_bundle(bundle_dir, verify=False)
    run = client.get_run(run_id)
    mods = bundle.plan.task.modalities
    logged = client.create_logged_model(run.info.experiment_id, name=name, source_run_id=run_id,
                                        params=model_params(bundle), model_type="medseg-bundle",
                                        tags={"medseg.dataset": bundle.plan.dataset, "medseg.model": bundle.model})
    try:
        with tempfile.TemporaryDirectory(prefix="medseg-mlflow-model-") as tmp:
            local = Path(tmp) / "model"
            meta = Model(artifact_path=logged.artifact_location, model_uuid=logged.model_id, run_id=run_id,
                         model_id=logged.model_id)
            mlflow.pyfunc.save_model(local, python_model=str(ENTRY), artifacts={"bundle": str(bundle_dir)},
                                     code_paths=[str(PACKAGE)], pip_requirements=requirements(),
                                     signature=signature(mods), input_example=input_example(mods), mlflow_model=meta)
            client.log_model_artifacts(logged.model_id, str(local))
    except BaseException:
        client.finalize_logged_model(logged.model_id, "FAILED")
        raise
    client.finalize_logged_model(logged.model_id, "READY")
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    if register:
        _register(client, name, logged.model_id, run_id, describe(bundle, name))
    log.info("model bundle %s logged as MLflow model %s (models:/%s)%s", bundle_dir, name, logged.model_id,
             " and registered" if register else "")
    return logged.model_id


def _register(client, name: str, model_id: str, run_id: str, description: str) -> None:
    """A new version of the registered model ``name`` (created, with ``description``, if new), linked both
    ways to the logged model, as ``mlflow.register_model`` links them (which only talks to the global URI)."""
    import json

    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    try:
        client.create_registered_model(name, description=description)
    except MlflowException as e:
        if e.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
        client.update_registered_model(name, description=description)
    version = client.create_model_version(name, source=f"models:/{model_id}", run_id=run_id, model_id=model_id)
    links = json.loads(client.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS) or "[]")
    links.append({"name": name, "version": version.version})
    client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(links)})
