"""Entry point of the ``jad`` command: argparse subcommands.

User errors (bad options, bad files) exit with status 2 and a one-line message, no
traceback.
"""

from __future__ import annotations

import argparse
import sys

from jad import __version__
from jad.cli import demo, evaluate, fit, methods, predict, sparse_demo


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" only where there is a default the help does not state."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The ``jad`` argument parser with its subcommands."""
    parser = argparse.ArgumentParser(
        prog="jad",
        description="jad: unsupervised visual anomaly detection in JAX.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"jad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    commands_table = [
        (
            "demo",
            "fit and evaluate every method on built-in data (the main job)",
            demo.add_arguments,
            demo.run,
        ),
        (
            "fit",
            "fit a detector on a dataset's training images",
            fit.add_fit_arguments,
            fit.run_fit,
        ),
        (
            "evaluate",
            "evaluate a fitted detector on a dataset's test split",
            evaluate.add_evaluate_arguments,
            evaluate.run_evaluate,
        ),
        (
            "predict",
            "anomaly maps and scores for new images",
            predict.add_predict_arguments,
            predict.run_predict,
        ),
        (
            "methods",
            "list the methods, their presets and config fields",
            methods.add_arguments,
            methods.run,
        ),
        (
            "sparse-demo",
            "K-SVD and OMP at PSDL's scale on planted data",
            sparse_demo.add_arguments,
            sparse_demo.run,
        ),
    ]
    for name, help_text, add_arguments, run in commands_table:
        command = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            formatter_class=_HelpFormatter,
        )
        add_arguments(command)
        command.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parses ``argv`` and runs the subcommand; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, OSError) as err:
        print(f"jad {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"jad {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
