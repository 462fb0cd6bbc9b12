"""The ``medseg`` command: one subcommand per workflow stage, usable on plain files.

Each stage module that offers commands has a ``register(subparsers)`` function adding its
subcommands; each subcommand sets ``func`` (called with the parsed namespace) via
``set_defaults``. Heavy imports happen inside those functions so ``medseg --help`` is fast.

Conventions: inputs are ``-i/--input``, outputs ``-o/--output``; every argument has help and
its default is shown (:class:`HelpFormatter`); the flags of earlier versions (``--out``,
``--out-mask``, ``--json``, ``--pred`` and positional inputs) still work but are not shown.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import logging
import sys

from medseg import __version__
from medseg.io import InputError
from medseg.logs import setup_logging

# modules providing register(subparsers); order = order in --help
COMMAND_MODULES = (
    "medseg.cohort.commands",
    "medseg.preprocess.commands",
    "medseg.training.commands",
    "medseg.inference.predict",
    "medseg.evaluate.commands",
    "medseg.wsi.commands",
    "medseg.tracking.sync",
)

log = logging.getLogger("medseg")

# flags of earlier versions: still accepted, not shown in --help
HIDDEN_ALIASES = frozenset({"--out", "--out-mask", "--json", "--pred"})


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every default (``(default: ...)``) and hides :data:`HIDDEN_ALIASES`.

    Not for required arguments, switches, and ``None`` defaults (their help says what happens
    when the argument is not given).
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required or action.default is None or action.default is False or "default" in text:
            return text
        return super()._get_help_string(action)

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if action.option_strings and any(o in HIDDEN_ALIASES for o in action.option_strings):
            action = copy.copy(action)
            action.option_strings = [o for o in action.option_strings if o not in HIDDEN_ALIASES]
        return super()._format_action_invocation(action)


class Parser(argparse.ArgumentParser):
    """Every (sub)command parser: :class:`HelpFormatter` unless another one is asked for."""

    def __init__(self, *args, **kwargs) -> None:
        if kwargs.get("formatter_class") in (None, argparse.HelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
            kwargs["formatter_class"] = HelpFormatter
        super().__init__(*args, **kwargs)


def add_input(p: argparse.ArgumentParser, help: str, *, legacy_positional: str | None = None, **kwargs) -> None:
    """``-i/--input``; ``legacy_positional``: the positional argument of earlier versions (hidden)."""
    if legacy_positional is None:
        p.add_argument("-i", "--input", required=kwargs.pop("required", True), help=help, **kwargs)
        return
    p.add_argument("-i", "--input", default=None, help=help + " (required)", **kwargs)
    p.add_argument(legacy_positional, nargs="?", default=None, help=argparse.SUPPRESS)
    p.set_defaults(_legacy_input=legacy_positional, _parser=p)


def add_output(p: argparse.ArgumentParser, help: str, *legacy: str, required: bool = True, **kwargs) -> None:
    """``-o/--output`` (``legacy``: hidden flags of earlier versions, e.g. ``--out``)."""
    p.add_argument("-o", "--output", *legacy, dest="output", required=required, help=help, **kwargs)


def _resolve_legacy_input(args: argparse.Namespace) -> None:
    name = getattr(args, "_legacy_input", None)
    if name is None:
        return
    legacy = getattr(args, name, None)
    if args.input is None:
        if legacy is None:
            args._parser.error("the following arguments are required: -i/--input")
        args.input = legacy
    elif legacy is not None:
        args._parser.error(f"give the input once: -i/--input {args.input} or {legacy}, not both")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="medseg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"medseg {__version__}", help="print the version and exit")
    parser.add_argument("--log", default=None, help="also write the log to this file")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
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
    _resolve_legacy_input(args)
    setup_logging(args.log, logging.DEBUG if args.verbose else logging.INFO)
    try:
        result = args.func(args)
    except (InputError, ValueError, FileNotFoundError) as e:
        log.error("%s", e)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
