"""The ``cryopose`` command line. It only parses arguments and calls one function per subcommand.

Bad input ends with one line ``cryopose: error: FILE: problem`` on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable

from . import __version__
from .errors import InputError

Formatter = argparse.ArgumentDefaultsHelpFormatter


def _cmd_info(args: argparse.Namespace) -> None:
    from .info import info

    print(info(args.file, datadir=args.datadir, apix=args.apix, check=not args.no_check))


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", formatter_class=Formatter, help="summarise a particle file (.star/.cs) or MRC file",
                       description="Print particle count, box, pixel size, CTF ranges, optics groups and pose "
                                   "columns of a .star/.cs file (checking every image stack it names), or the "
                                   "header and statistics of an MRC map/stack.")
    p.add_argument("file", help="particles .star/.cs, or .mrc/.mrcs/.map")
    p.add_argument("--datadir", default=None, help="folder holding the image stacks (default: next to the file)")
    p.add_argument("--apix", type=float, default=None, help="pixel size in Å, overriding the file's")
    p.add_argument("--no-check", action="store_true", help="do not open the image stacks")
    p.set_defaults(func=_cmd_info)


_SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_info]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cryopose", formatter_class=Formatter,
                                     description="Ab initio single-particle cryo-EM reconstruction.")
    parser.add_argument("--version", action="version", version=f"cryopose {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"cryopose: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        args.func(args)
    except InputError as err:
        print(f"cryopose: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cryopose: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
