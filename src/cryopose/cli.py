"""The ``cryopose`` command line. It only parses arguments and hands them to the subcommand's job
(:mod:`cryopose.jobs`).

Bad input ends with one line ``cryopose: error: FILE: problem`` on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections.abc import Callable

from . import __version__
from .errors import InputError


class Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except ``None`` ones (their help says what applies)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if action.default is None else super()._get_help_string(action)


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", formatter_class=Formatter,
                       help="summarise a particle file (.star/.cs/.pkl) or MRC file",
                       description="Print particle count, box, pixel size, CTF ranges, optics groups and pose "
                                   "columns of a .star/.cs/.pkl file (checking every image stack it names), or the "
                                   "header and statistics of an MRC map/stack.")
    p.add_argument("file", help="particles .star/.cs/.pkl, or .mrc/.mrcs/.map")
    _add_particle_options(p, images=False)
    p.add_argument("--no-check", action="store_true", help="do not open the image stacks")
    p.set_defaults(job="info")


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
    p.add_argument("--bfactor", type=float, default=0.0, help="extra B-factor blur of the atomic model (Å²; the "
                                                                "ground truth is blurred too)")
    p.add_argument("--envelope-bfactor", type=float, default=0.0, metavar="B",
                   help="signal envelope exp(-B k²/4) on the images only, as in real data (Å²; not in the STAR)")
    p.add_argument("--noise-spectrum", default="white", metavar="SHAPE",
                   help="noise power per frequency: white, pink (falling as 1/(1 + 30 Å·k)), ice (a ring at "
                        "3.7 Å) or a CSV of frequency_per_A,power rows; same variance as white noise")
    p.add_argument("--junk", type=float, default=0.0, metavar="FRACTION",
                   help="share of images without the particle (only noise, or a blob through their CTF); their "
                        "indices go to simulation.json")
    p.add_argument("--preferred-fraction", type=float, default=0.0, metavar="F",
                   help="share of particles viewed within --preferred-within of the z axis (preferred views)")
    p.add_argument("--preferred-within", type=float, default=20.0, metavar="DEG", help="cone of the preferred views")
    p.add_argument("--chains", nargs="+", default=None, help="keep only these chains of the model")
    p.add_argument("--map-apix", type=float, default=None, help="voxel size of an input map (Å), if its "
                                                                "header has none")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same data set)")
    p.add_argument("--force", action="store_true", help="overwrite an existing simulation in the folder")
    p.set_defaults(job="simulate")


def _add_particle_options(p: argparse.ArgumentParser, images: bool = True) -> None:
    """Where the stacks are and the pixel size; with ``images``, how the images are read (DataOptions)."""
    p.add_argument("--datadir", default=None, help="folder holding the image stacks (default: see the file's "
                                                   "reader; relative stack paths are tried there, in the working "
                                                   "directory, then beside the file)")
    p.add_argument("--apix", type=float, default=None, help="pixel size in Å, overriding the file's")
    if images:
        p.add_argument("--box", type=int, default=None, help="Fourier-crop the images to this box (px, even)")
        p.add_argument("--invert", action="store_true", help="multiply images by -1 (for dark-protein data)")


def _add_backproject(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("backproject", formatter_class=Formatter, help="reconstruct a map from known poses",
                       description="Direct Fourier inversion with CTF (Wiener) weighting and gridding correction "
                                   "from the poses in a STAR/.cs file, like relion_reconstruct --ctf.")
    p.add_argument("particles", help="particles .star/.cs with poses")
    p.add_argument("-o", "--output", required=True, help="output map (.mrc)")
    p.add_argument("--snr", type=float, default=None,
                   help="Wiener term 1/SNR added to the CTF² weights (default: none, as relion_reconstruct)")
    p.add_argument("--halves", action="store_true", help="also write maps of the even / odd particles")
    p.add_argument("--symmetry", default="C1", metavar="G",
                   help="impose point group G as relion_reconstruct --sym: Cn, Dn, T, O, I (= I2) or I1-I4")
    _add_particle_options(p)
    p.set_defaults(job="backproject")


def _add_reconstruct(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reconstruct", formatter_class=Formatter, help="ab initio map and poses from particles",
                       description="Ab initio reconstruction into a run directory: config.json, log.jsonl, "
                                   "checkpoint.pt (resumable with --resume), maps/epoch_NNN.mrc, map.mrc and "
                                   "poses.star (RELION 3.1). Data-parallel on several GPUs or nodes when started "
                                   "by torchrun: torchrun --nproc-per-node N -m cryopose reconstruct ...")
    p.add_argument("particles", help="particles .star/.cs/.pkl (with CTF)")
    p.add_argument("-o", "--output", required=True, help="run directory")
    p.add_argument("--method", default="semi-amortized", choices=["semi-amortized", "search-supervised"],
                   help="reconstruction method")
    from .methods.config import METHOD_CONFIGS, NOISE_MODELS  # no torch: --help stays fast

    runs = {name: (kind.epochs, kind.batch) for name, kind in METHOD_CONFIGS.items()}
    p.add_argument("--epochs", type=int, default=None, help="total epochs [default: " + ", ".join(
        f"{name} {e}" for name, (e, _) in runs.items()) + "]")
    p.add_argument("--batch", type=int, default=None, help="particles per batch (of the whole job under torchrun) "
                   "[default: " + ", ".join(f"{name} {b}" for name, (_, b) in runs.items()) + "]")
    p.add_argument("--shifts", default="auto", choices=["auto", "on", "off"],
                   help="estimate in-plane shifts (auto: off only when the file's shifts are all zero)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0, help="random seed (CPU runs are reproducible)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in the output directory (one killed before its first checkpoint starts over)")
    p.add_argument("--force", action="store_true", help="replace a run already in the output directory")
    p.add_argument("--ref", default=None, help="reference map: log the FSC resolution after each epoch")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0, help="checkpoint interval (minutes)")
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    p.add_argument("--halves", action="store_true",
                   help="also write map_half1/2.mrc from the even / odd particles at the final poses")
    p.add_argument("--relax-symmetry", action=argparse.BooleanOptionalAction, default=True,
                   help="after training, if the map is pseudo-symmetric (correlation with its best "
                        "self-superposition >= 0.8), let each particle choose between its pose and its mate by "
                        "EM on gold-standard halves (n classes for an n-fold), and reconstruct map.mrc from the chosen "
                        "poses; an exact symmetry (>= 0.97) is reported, not relaxed")
    p.add_argument("--local-rounds", type=int, default=5, metavar="N",
                   help="after training, refine every pose locally against the map of the other half of the particles "
                        "(gold-standard, as RELION's auto-refine) for N rounds, and reconstruct map.mrc from the "
                        "refined poses (0: the trained map and poses as they are)")
    p.add_argument("--noise-model", choices=NOISE_MODELS, default="shell",
                   help="the images' noise: shell (its power per resolution shell, from the images outside the "
                        "particle, then from the residuals after training, as RELION) or white (one level)")
    p.add_argument("--exclude-worst", type=float, default=0.0, metavar="FRACTION",
                   help="leave this share of the particles that fit the final map worst (junk) out of map.mrc and "
                        "the half maps; every particle's fit score is in poses.star (rlnLogLikeliContribution)")
    p.add_argument("--symmetry", default="C1", metavar="G",
                   help="point group Cn, Dn, T, O, I (= I2) or I1-I4: train in C1, then bring the map and poses into "
                        "RELION's frame for G (as relion_align_symmetry), refine the poses locally and reconstruct "
                        "map.mrc with G imposed")
    _add_method_settings(p)
    _add_particle_options(p)
    p.set_defaults(job="reconstruct")


def _add_method_settings(p: argparse.ArgumentParser) -> None:
    """The methods' settings shown as flags (generated from their config fields), and ``--option`` for the rest."""
    from .methods.config import expert_settings, flag_settings

    groups: dict[str, argparse._ArgumentGroup] = {}
    for s in flag_settings():
        methods = " and ".join(s.defaults) if len(s.defaults) < 2 else "both methods"
        g = groups.get(methods) or groups.setdefault(methods, p.add_argument_group(methods))
        defaults = "; ".join(f"{m} {_shown(d)} ({source})" for m, (d, source) in s.defaults.items())
        options = dict(help=f"{s.help} [default: {defaults}]", dest=s.name, default=None)
        if s.kind.startswith("bool"):
            g.add_argument(s.flag, action=argparse.BooleanOptionalAction, **options)
        elif s.kind.startswith("tuple"):
            g.add_argument(s.flag, type=int, nargs="*", metavar="K", **options)
        else:
            metavar = "{" + ",".join(s.choices) + "}" if s.choices else {"int": "N", "float": "X"}.get(
                s.kind.split(" ")[0], "VALUE")
            g.add_argument(s.flag, type=str, metavar=metavar, **options)
    expert = "; ".join(f"{m}: {', '.join(names)}" for m, names in expert_settings().items())
    p.add_argument("--option", action="append", default=None, metavar="KEY=VALUE",
                   help=f"an expert setting of the method (repeatable; each with its default and source in "
                        f"config.json): {expert}")


def _shown(value) -> str:
    if value is None or value == ():
        return "none"
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict-poses", formatter_class=Formatter, help="poses of new particles from a finished run",
                       description="Poses of particles a run did not train on (e.g. new micrographs of the same "
                                   "sample): the run's encoder proposes, its map picks the best head, and each pose "
                                   "is refined locally against the map; writes a STAR file (RELION 3.1).")
    p.add_argument("run", help="run directory of cryopose reconstruct (finished: map.mrc and checkpoint.pt)")
    p.add_argument("particles", help="particles .star/.cs/.pkl (with CTF), same pixel size as the run's")
    p.add_argument("-o", "--output", required=True, help="output poses (.star)")
    p.add_argument("--search", action="store_true",
                   help="also search the SO(3) grid globally under the map and keep the better pose (slower; for "
                        "runs whose encoder learned no poses)")
    p.add_argument("--local-rounds", type=int, default=3, metavar="N", help="rounds of local refinement")
    p.add_argument("--batch", type=int, default=64, help="images per batch")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    _add_particle_options(p, images=False)
    p.set_defaults(job="predict")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", formatter_class=Formatter, help="FSC and pose error against the truth",
                       description="Align a map (or a run directory's map.mrc) to a reference (rotation search, "
                                   "both hands, shift), compute the FSC, align estimated poses to true ones, and "
                                   "write evaluation.json, PNG plots and report.html.")
    p.add_argument("run", help="run directory or map (.mrc)")
    p.add_argument("--ref", required=True, help="reference map (e.g. ground_truth.mrc)")
    p.add_argument("--poses", default=None, help="true poses (.star/.cs) for the pose error")
    p.add_argument("--symmetry", default="C1", metavar="G",
                   help="point group of the reference (its axes fitted to the reference): pose errors modulo G")
    p.add_argument("--apix", type=float, default=None, help="voxel size (Å) of the map, overriding its header")
    p.add_argument("-o", "--output", default=None, help="folder for the report (default: the run directory)")
    p.set_defaults(job="evaluate")


def _add_fsc(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fsc", formatter_class=Formatter, help="FSC curve and resolution of two maps",
                       description="Fourier shell correlation of two maps (e.g. half maps), without alignment; "
                                   "writes a PNG and a CSV.")
    p.add_argument("map_a")
    p.add_argument("map_b")
    p.add_argument("--apix", type=float, default=None, help="voxel size (Å), overriding the headers")
    p.add_argument("--mask", default=None, help="mask map (.mrc) applied to both")
    p.add_argument("-o", "--output", default=None, help="output folder (default: next to map A)")
    p.set_defaults(job="fsc")


def _add_symmetry(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("symmetry", formatter_class=Formatter, help="find a map's point group",
                       description="Print the correlation of a map with its copies turned by each candidate "
                                   "group (C2…Cn, D2…Dn with n = --max-order, T, O, I), the group found (C1 when "
                                   "none) and the rotation into RELION's frame for it (as relion_align_symmetry).")
    p.add_argument("map", help="map (.mrc)")
    p.add_argument("--apix", type=float, default=None, help="voxel size (Å), overriding the header")
    p.add_argument("--max-order", type=int, default=12, help="largest n of the candidates Cn and Dn")
    p.add_argument("-o", "--output", default=None, help="also write the map turned into RELION's frame (.mrc)")
    p.set_defaults(job="symmetry")


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", formatter_class=Formatter, help="simulate, reconstruct ab initio and evaluate a "
                                                                "built-in molecule",
                       description="Simulate the built-in demo protein (made by code, no download), reconstruct it "
                                   "ab initio with the default method and from the true poses (the oracle), "
                                   "evaluate both against the truth and write a report.")
    p.add_argument("-o", "--output", default="demo", help="output folder")
    p.add_argument("--n", type=int, default=2000, help="number of particles")
    p.add_argument("--box", type=int, default=32, help="box (px)")
    p.add_argument("--apix", type=float, default=3.0, help="pixel size (Å)")
    p.add_argument("--snr", type=float, default=0.5, help="signal-to-noise ratio (at 0.1 the default ab initio run "
                   "does not find the poses of this small, globular molecule: docs/methods.md)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--force", action="store_true", help="overwrite an earlier demo in the folder")
    p.set_defaults(job="demo")


_SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_demo, _add_info, _add_simulate, _add_backproject, _add_reconstruct, _add_predict, _add_evaluate, _add_fsc,
    _add_symmetry]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cryopose", formatter_class=Formatter,
                                     description="Ab initio single-particle cryo-EM reconstruction.")
    parser.add_argument("--version", action="version", version=f"cryopose {__version__}")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars (as TQDM_DISABLE=1; bars are never written to a file or pipe)")
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
    if args.quiet:
        os.environ["TQDM_DISABLE"] = "1"  # also read by torchrun's workers and data-loading processes
    try:
        importlib.import_module(f"cryopose.jobs.{args.job}").run(args)
    except InputError as err:
        print(f"cryopose: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cryopose: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
