"""``cryopose symmetry``: a map's point group and the rotation into RELION's frame for it, on symmetrised
synthetic maps turned at random, an asymmetric map, β-galactosidase (D2) and adenylate kinase (4AKE)."""

from __future__ import annotations

import numpy as np
import pytest
import roma
import torch

from cryopose.cli import main
from cryopose.evaluate.symmetry import candidate_groups, find_symmetry
from cryopose.geometry.symmetry import point_group
from cryopose.io.mrc import read_map, write_map
from cryopose.io.structure import read_structure
from cryopose.physics.align import transform_volume
from cryopose.physics.density import model_to_map

F64 = torch.float64


def _blob_map(group: torch.Tensor, seed: int, box: int = 32, blobs: int = 4, sigma: float = 1.0,
              offset: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> torch.Tensor:
    """A ``(D, D, D)`` map of Gaussian blobs (``sigma`` voxels) at the orbits under ``group`` of random centres
    within 9 voxels of the box centre, turned by a random rotation and moved by ``offset`` (voxels ``x, y, z``),
    exactly (without interpolation)."""
    g = torch.Generator().manual_seed(seed)
    centres = (torch.rand(blobs, 3, generator=g, dtype=F64) * 2 - 1) * 9
    turn = roma.random_rotmat(1, dtype=F64, generator=g)[0]
    points = (centres @ group.transpose(-1, -2)).reshape(-1, 3) @ turn.T  # turn·g·c for every element and centre
    points = points + torch.tensor(offset, dtype=F64)
    j = torch.arange(box, dtype=F64) - box // 2
    z, y, x = torch.meshgrid(j, j, j, indexing="ij")
    d2 = ((torch.stack([x, y, z], -1)[..., None, :] - points) ** 2).sum(-1)
    return torch.exp(-d2 / (2 * sigma**2)).sum(-1)


def _symmetrised_correlation(volume: torch.Tensor, name: str) -> float:
    """Correlation of a map with its average over RELION's group ``name``."""
    average = transform_volume(volume, point_group(name)).mean(0)
    return float(torch.corrcoef(torch.stack([volume.flatten(), average.flatten()]))[0, 1])


@pytest.mark.parametrize("name, seed", [("C4", 1), ("D7", 2), ("T", 3), ("O", 4), ("I", 5)])
def test_a_symmetrised_map_turned_at_random_is_found_with_its_group_and_frame(name, seed):
    volume = _blob_map(point_group(name), seed)
    result = find_symmetry(volume)
    assert result.group == name, result.correlations
    assert result.correlations[name] >= 0.99
    assert list(result.correlations) == sorted(result.correlations, key=result.correlations.get, reverse=True)
    assert set(result.correlations) == set(candidate_groups(12))
    turned = result.alignment().apply(volume).double()
    assert _symmetrised_correlation(turned, name) > 0.98
    assert _symmetrised_correlation(volume, name) < 0.95  # before the rotation, RELION's group does not fit


def test_an_off_centre_map_is_found_and_centred():
    volume = _blob_map(point_group("D3"), seed=8, offset=(3.0, -2.0, 1.0))
    result = find_symmetry(volume)
    assert result.group == "D3", result.correlations
    np.testing.assert_allclose(result.rotation.T @ result.shift_px, [-3.0, 2.0, -1.0], atol=0.1)
    assert _symmetrised_correlation(result.alignment().apply(volume).double(), "D3") > 0.98


def test_an_asymmetric_map_is_c1_with_the_identity():
    result = find_symmetry(_blob_map(point_group("C1"), seed=6, blobs=16))
    assert result.group == "C1" and max(result.correlations.values()) < 0.8, result.correlations
    np.testing.assert_array_equal(result.rotation, np.eye(3))


def _model_map(shared_data, model: str, box: int, apix: float, chains: list[str] | None = None) -> torch.Tensor:
    return torch.as_tensor(model_to_map(read_structure(shared_data / "models" / model, chains=chains), box, apix))


def test_beta_galactosidase_is_d2(shared_data):
    volume = _model_map(shared_data, "5A1A.cif", 64, 3.0)
    result = find_symmetry(volume)
    assert result.group == "D2" and result.correlations["D2"] >= 0.99 and not result.pseudo, result.correlations
    assert _symmetrised_correlation(result.alignment().apply(volume).double(), "D2") > 0.98


@pytest.mark.parametrize("chains, pseudo", [(["A"], []), (None, ["C2"])])
def test_adenylate_kinase_is_c1_and_its_two_chains_a_pseudo_two_fold(shared_data, chains, pseudo):
    """4AKE's chain A, and its two chains, whose map superposes on itself turned 180° (not exactly)."""
    result = find_symmetry(_model_map(shared_data, "4AKE.pdb", 64, 2.0, chains))
    assert result.group == "C1" and result.pseudo == pseudo, result.correlations


def test_cli_prints_every_candidate_and_writes_the_map_in_relions_frame(tmp_path, capsys):
    write_map(tmp_path / "map.mrc", _blob_map(point_group("D3"), seed=7).numpy(), 2.0)
    assert main(["symmetry", str(tmp_path / "map.mrc"), "--max-order", "4", "-o", str(tmp_path / "out.mrc")]) == 0
    lines = capsys.readouterr().out.splitlines()
    names, values = zip(*(line.split() for line in lines[:9]))
    assert sorted(names) == sorted(candidate_groups(4)) and list(map(float, values)) == sorted(map(float, values))[::-1]
    assert lines[9] == "group: D3"
    out = read_map(tmp_path / "out.mrc")
    assert out.voxel_size_A == pytest.approx(2.0)
    assert _symmetrised_correlation(torch.as_tensor(out.data).double(), "D3") > 0.98
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.mrc", "out.mrc"]


def test_cli_rejects_a_max_order_below_two(tmp_path, capsys):
    write_map(tmp_path / "map.mrc", np.zeros((8, 8, 8), np.float32), 2.0)
    assert main(["symmetry", str(tmp_path / "map.mrc"), "--max-order", "1"]) == 2
    assert capsys.readouterr().err.strip() == "cryopose: error: --max-order must be at least 2, not 1"
