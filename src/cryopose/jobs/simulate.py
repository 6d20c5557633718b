"""``cryopose simulate``: particles with known poses and CTF (see :mod:`cryopose.simulation.simulate`)."""

from __future__ import annotations

import argparse

from ..simulation.simulate import SimulationConfig, simulate


def run(args: argparse.Namespace) -> None:
    cfg = SimulationConfig(source=args.input, box=args.box, apix=args.apix, n=args.n, snr=args.snr,
                           shift_std_px=args.shift_std, defocus_min_um=args.defocus[0],
                           defocus_max_um=args.defocus[1], astigmatism_max_A=args.astigmatism,
                           voltage_kV=args.voltage, cs_mm=args.cs, amplitude_contrast=args.amplitude_contrast,
                           bfactor_A2=args.bfactor, seed=args.seed, chains=args.chains or [],
                           map_apix=args.map_apix, envelope_bfactor_A2=args.envelope_bfactor,
                           noise_spectrum=args.noise_spectrum, junk_fraction=args.junk,
                           preferred_fraction=args.preferred_fraction, preferred_within_deg=args.preferred_within)
    summary = simulate(cfg, args.output, force=args.force)
    print(f"simulated {cfg.n} particles of {cfg.box} px at {cfg.apix} Å/px, SNR {summary['measured_snr']:.4g}, "
          f"in {summary['seconds']:.1f} s -> {args.output}/particles.star")
