"""The methods' settings: each field documented with the source of its default, the ``reconstruct`` flags generated
from them once, and ``--option key=value`` read by the field's type, with one-line errors."""

from __future__ import annotations

from dataclasses import fields

import pytest

from cryopose.cli import build_parser, main
from cryopose.io import read_particles
from cryopose.io.dataset import DataOptions, ParticleDataset
from cryopose.jobs.reconstruct import ReconstructOptions, _configuration, method_options
from cryopose.methods.config import METHOD_CONFIGS, OURS, PAPER, MethodConfig, flag_settings
from cryopose.simulation.simulate import SimulationConfig, simulate


@pytest.mark.parametrize("config", [MethodConfig, *METHOD_CONFIGS.values()])
def test_every_setting_has_help_and_the_source_of_its_default(config):
    for f in fields(config):
        assert f.metadata["help"] and f.metadata["source"] in (PAPER, OURS), f.name


def test_shared_flags_are_generated_once_with_each_methods_default():
    flags = {s.flag: s for s in flag_settings()}
    assert flags["--switch-epoch"].defaults == {"semi-amortized": (8, OURS), "search-supervised": (10, OURS)}
    assert set(flags["--heads"].defaults) == {"semi-amortized"}
    assert "--denoiser-snr" in flags and "--snr" not in flags and "--loss" not in flags  # --loss is an expert option
    help_text = build_parser()._subparsers._group_actions[0].choices["reconstruct"].format_help()
    assert help_text.count("--switch-epoch N") == 2  # once in the usage line, once in the options
    assert "--epochs-amortized" not in help_text and "--epochs-search" not in help_text


def _options(*argv: str) -> dict:
    return method_options(build_parser().parse_args(["reconstruct", "p.star", "-o", "run", *argv]))


def test_flags_and_options_are_read_by_the_fields_type():
    assert _options("--switch-epoch", "7", "--search-epochs", "0", "2", "--option", "lr_shift_px=0.3",
                    "--option", "band_ramp_epochs=4", "--option", "max_shift_A=none") == {
        "switch_epoch": 7, "search_epochs": (0, 2), "lr_shift_px": 0.3, "band_ramp_epochs": 4, "max_shift_A": None}
    assert _options("--method", "search-supervised", "--switch-epoch", "3", "--denoiser-snr", "0.05",
                    "--option", "beam_explore=false", "--option", "denoiser-steps=100") == {
        "switch_epoch": 3, "denoiser_snr": 0.05, "beam_explore": False, "denoiser_steps": 100}


@pytest.mark.parametrize("argv, message", [
    (["--method", "search-supervised", "--heads", "3"], "--heads does not apply to --method search-supervised"),
    (["--option", "heads=x"], "--option heads=x: heads takes a number (int), not 'x'"),
    (["--option", "loss=l2"], "--option loss=l2: loss takes nll, l1, not 'l2'"),
    (["--option", "beam_width=4"], "--option beam_width=4: unknown setting 'beam_width'"),
    (["--option", "shifts=true"], "unknown setting 'shifts'"),  # set by --shifts
    (["--option", "heads"], "--option heads: expected KEY=VALUE"),
    (["--encoder", "huge"], "encoder takes light, paper, small, not 'huge'"),
])
def test_a_bad_setting_is_one_error_line(argv, message, capsys):
    assert main(["reconstruct", "p.star", "-o", "run", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cryopose: error: ") and message in err[0], err


def test_epochs_and_batch_default_to_the_methods_own(tmp_path):
    """A run's length and batch are the method's unless given: semi-amortized 30 epochs of 8 particles,
    search-supervised 20 of 32 (``MethodConfig.epochs`` / ``batch``), shown in ``--help``."""
    simulate(SimulationConfig(source="demo", box=16, apix=6.0, n=8, snr=1.0), tmp_path)
    dataset = ParticleDataset(read_particles(tmp_path / "particles.star"))

    def run(**given):
        config = _configuration(tmp_path / "particles.star", ReconstructOptions(**given), DataOptions(), dataset,
                                None, 1)
        return config["epochs"], config["batch"]

    assert run() == (30, 8)
    assert run(method="search-supervised") == (20, 32)
    assert run(epochs=3, batch=5) == (3, 5)
    help_text = build_parser()._subparsers._group_actions[0].choices["reconstruct"].format_help()
    shown = " ".join(help_text.split()).replace("- ", "-")  # argparse wraps lines at hyphens
    assert "total epochs [default: semi-amortized 30, search-supervised 20]" in shown
    assert "[default: semi-amortized 8, search-supervised 32]" in shown
