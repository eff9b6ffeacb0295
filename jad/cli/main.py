"""Entry point of the ``jad`` command: argparse subcommands.

User errors (bad options, bad files) exit with status 2 and a one-line message, no
traceback.
"""

from __future__ import annotations

import argparse
import sys

from jad import __version__
from jad.cli import demo


def build_parser() -> argparse.ArgumentParser:
    """The ``jad`` argument parser with its subcommands."""
    parser = argparse.ArgumentParser(
        prog="jad",
        description="jad: unsupervised visual anomaly detection in JAX.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"jad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo_parser = sub.add_parser(
        "demo",
        help="run the main job on built-in data (now: the sparse-coding core)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    demo.add_arguments(demo_parser)
    demo_parser.set_defaults(run=demo.run)
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
