"""Logging set-up shared by the CLI and the Snakemake scripts (one logger per module)."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(log_file: str | Path | None = None, level: int = logging.INFO) -> None:
    """Send records of every ``medseg`` logger to stderr and, if given, to ``log_file``.

    Args:
        log_file: path of the rule's log file (created with its parent folder).
        level: logging level for the root logger.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(level=level, format=FORMAT, handlers=handlers, force=True)
    for noisy in ("matplotlib", "PIL", "urllib3", "git", "alembic", "mlflow.store"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
