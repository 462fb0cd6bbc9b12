"""The ``medseg`` command: one subcommand per workflow stage, usable on plain files.

Each stage module that offers commands has a ``register(subparsers)`` function adding its
subcommands; each subcommand sets ``func`` (called with the parsed namespace) via
``set_defaults``. Heavy imports happen inside those functions so ``medseg --help`` is fast.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from medseg.io import InputError
from medseg.logs import setup_logging

# modules providing register(subparsers); order = order in --help
COMMAND_MODULES = (
    "medseg.cohort.commands",
    "medseg.preprocess.commands",
    "medseg.train_commands",
    "medseg.bundle_predict",
    "medseg.evaluate.commands",
    "medseg.wsi.commands",
    "medseg.tracking_sync",
)

log = logging.getLogger("medseg")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medseg", description=__doc__.splitlines()[0])
    parser.add_argument("--log", default=None, help="also write the log to this file")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name or name.startswith(f"{e.name}."):  # module not written yet
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log, logging.DEBUG if args.verbose else logging.INFO)
    try:
        result = args.func(args)
    except (InputError, ValueError, FileNotFoundError) as e:
        log.error("%s", e)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
