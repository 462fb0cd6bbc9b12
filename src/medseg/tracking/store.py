"""The MLflow store the syncer (:mod:`medseg.tracking.sync`) writes: opened with its tables created,
locked while written, and the experiments in it.

A SQLite store is locked (``mlflow.db.lock`` beside it) while a sync creates or writes it, so two
invocations with different spools, or two projects sharing one store, never create or write it
at once; a creation raced by another program (``table registered_model_tags already exists``,
e.g. ``mlflow ui`` opening the same fresh file) is retried, not reported as "MLflow unavailable".
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import time
from pathlib import Path

from medseg.tracking import ARTIFACT_ROOT, DEFAULT_URI, tracking_uri

log = logging.getLogger(__name__)

# MLflow 3's UI opens an experiment of this kind on its runs table (not the GenAI traces overview)
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
# errors of a store that another process is creating or migrating: retried, not "unavailable"
TRANSIENT = ("already exists", "duplicate column", "database is locked", "out-of-date database schema", "no such table",
             "Online migration", "alembic_version")


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative to the working directory), else None."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def store_locked(uri: str):
    """Exclusive lock on ``<db>.lock`` beside a SQLite store while it is created and written; other stores
    (a tracking server) take concurrent clients themselves."""
    db = _sqlite_file(uri)
    with contextlib.ExitStack() as stack:
        if db is not None:
            try:
                fh = stack.enter_context(open(db.with_name(db.name + ".lock"), "w"))
            except OSError as e:  # a folder we cannot write: the store will say so itself
                log.debug("tracking: no lock beside %s: %s", db, e)
            else:
                fcntl.flock(fh, fcntl.LOCK_EX)
                stack.callback(fcntl.flock, fh, fcntl.LOCK_UN)
        yield


def open_client(attempts: int = 6, wait_s: float = 2.0):
    """A client of the store, its tracking and registry tables created (or checked); a creation raced
    by another program (``table registered_model_tags already exists``) is retried, not reported."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep the workflow's log readable
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    for attempt in range(attempts):
        try:
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            client.search_experiments(max_results=1)
            client.search_registered_models(max_results=1)
            return client
        except Exception as e:  # sqlalchemy's OperationalError, or MLflow's wrapping of it
            if attempt == attempts - 1 or not any(t in str(e) for t in TRANSIENT):
                raise
            log.info("tracking: store %s is being created by another process (%s); retrying", uri,
                     str(e).splitlines()[0][:200])
            time.sleep(wait_s * (attempt + 1))


def _relative_artifacts(exp_id: str) -> None:
    """Store the experiment's artifact location as ``mlartifacts/<id>`` (relative to the project
    folder, where ``mlflow ui`` runs) instead of the absolute path MLflow resolves it to: a moved
    or copied project keeps its artifacts. Only for the default local SQLite store."""
    if tracking_uri() != DEFAULT_URI:
        return
    with contextlib.closing(sqlite3.connect(DEFAULT_URI.removeprefix("sqlite:///"), timeout=60)) as db, db:
        db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                   (f"{ARTIFACT_ROOT}/{exp_id}", int(exp_id)))


def experiment_id(client, name: str, cache: dict) -> str:
    if name not in cache:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            try:
                exp_id = client.create_experiment(name, tags={EXPERIMENT_KIND: MODEL_TRAINING})
                _relative_artifacts(exp_id)
            except Exception:  # created meanwhile by another client of a tracking server
                if (exp := client.get_experiment_by_name(name)) is None:
                    raise
                exp_id = exp.experiment_id
        else:
            exp_id = exp.experiment_id
            if EXPERIMENT_KIND not in exp.tags:
                client.set_experiment_tag(exp_id, EXPERIMENT_KIND, MODEL_TRAINING)
        cache[name] = exp_id
    return cache[name]
