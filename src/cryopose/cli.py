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


def _cmd_simulate(args: argparse.Namespace) -> None:
    from .simulation.simulate import SimulationConfig, simulate

    cfg = SimulationConfig(source=args.input, box=args.box, apix=args.apix, n=args.n, snr=args.snr,
                           shift_std_px=args.shift_std, defocus_min_um=args.defocus[0],
                           defocus_max_um=args.defocus[1], astigmatism_max_A=args.astigmatism,
                           voltage_kV=args.voltage, cs_mm=args.cs, amplitude_contrast=args.amplitude_contrast,
                           bfactor_A2=args.bfactor, seed=args.seed, chains=args.chains or [],
                           map_apix=args.map_apix)
    summary = simulate(cfg, args.output, force=args.force)
    print(f"simulated {cfg.n} particles of {cfg.box} px at {cfg.apix} Å/px, SNR {summary['measured_snr']:.4g}, "
          f"in {summary['seconds']:.1f} s -> {args.output}/particles.star")


def _add_simulate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", formatter_class=Formatter, help="simulate particles with known poses and CTF",
                       description="Project a map (from an atomic model, an MRC map, or the built-in demo "
                                   "molecule) at uniform random poses with RELION's padded projector, apply a "
                                   "random CTF and shift, and add white noise at the requested SNR. Writes "
                                   "particles.mrcs, particles.star (RELION 3.1, true poses), ground_truth.mrc "
                                   "and simulation.json.")
    p.add_argument("input", help="PDB/mmCIF model, .mrc map, or 'demo' for the built-in molecule")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--box", type=int, default=64, help="image box (px, even)")
    p.add_argument("--apix", type=float, default=2.0, help="pixel size (Å)")
    p.add_argument("--n", type=int, default=10000, help="number of particles")
    p.add_argument("--snr", type=float, default=0.1, help="mean clean-image variance / noise variance")
    p.add_argument("--shift-std", type=float, default=0.0, help="standard deviation of the shifts (px)")
    p.add_argument("--defocus", type=float, nargs=2, default=(1.0, 2.5), metavar=("MIN", "MAX"),
                   help="defocus range (µm, underfocus positive)")
    p.add_argument("--astigmatism", type=float, default=200.0, help="largest |DefocusU - DefocusV| (Å)")
    p.add_argument("--voltage", type=float, default=300.0, help="acceleration voltage (kV)")
    p.add_argument("--cs", type=float, default=2.7, help="spherical aberration (mm)")
    p.add_argument("--amplitude-contrast", type=float, default=0.1, help="amplitude contrast (fraction)")
    p.add_argument("--bfactor", type=float, default=0.0, help="extra B-factor blur of the atomic model (Å²)")
    p.add_argument("--chains", nargs="+", default=None, help="keep only these chains of the model")
    p.add_argument("--map-apix", type=float, default=None, help="voxel size of an input map (Å), if its "
                                                                "header has none")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same data set)")
    p.add_argument("--force", action="store_true", help="overwrite an existing simulation in the folder")
    p.set_defaults(func=_cmd_simulate)


_SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_info, _add_simulate]


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
