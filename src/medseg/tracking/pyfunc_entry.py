"""The model-from-code file of a bundle's MLflow model (:mod:`medseg.tracking.mlflow_model`): MLflow
copies it into the logged model and runs it when the model is loaded (no pickled object)."""
from mlflow.models import set_model

from medseg.tracking.mlflow_model import BundleModel

set_model(BundleModel())
