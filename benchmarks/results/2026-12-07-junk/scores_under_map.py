"""How well a map tells junk from particles: each image's explained share of power at its best pose over the level-1
Hopf grid (576 rotations) and a 3 × 3 grid of 1 px shifts, within the 20 Å band, under MAP (``oriented``), under
MAP's spherical average (``spherical``), and their difference; per kind of image (particle, empty pick, blob) of
the simulated data set DATA (its ``simulation.json`` lists the junk; the kinds are redrawn from its seed).

    python scores_under_map.py DATA MAP
"""

import json
import sys

import numpy as np
import torch

from cryopose.geometry.so3_grid import cell_quaternions, quaternion_to_matrix
from cryopose.io import read_particles
from cryopose.io.dataset import ParticleDataset, make_loader
from cryopose.io.mrc import read_map
from cryopose.methods.beam_search import shift_grid
from cryopose.methods.decoder import ExplicitDecoder
from cryopose.methods.noise import initial_model
from cryopose.physics.fourier import hartley3_centered, shell_index

torch.set_num_threads(1)
data, map_file = sys.argv[1], sys.argv[2]
cfg = json.load(open(f"{data}/simulation.json"))["config"]
extra = np.random.default_rng([cfg["seed"], 1])  # as simulate draws the junk (no preferred views in these data)
kind = np.where(extra.random(cfg["n"]) < cfg["junk_fraction"], extra.integers(0, 2, cfg["n"]), -1)
dataset = ParticleDataset(read_particles(f"{data}/particles.star"))
sigma = initial_model("shell", torch.stack([dataset[i]["images"] for i in range(512)]))
decoder = ExplicitDecoder(dataset.box, dataset.pixel_size_A, sigma, torch.device("cpu"), lr=1e-3,
                          mantissa_exponent=False, init_rms=1e-2, resolution_start_A=20.0)
volume = (hartley3_centered(torch.tensor(np.array(read_map(map_file).data)).double()) / decoder.sigma).float()
shell = shell_index(dataset.box)
average = (torch.bincount(shell.flatten(), volume.double().flatten()) / torch.bincount(shell.flatten()))[shell]
grid = quaternion_to_matrix(cell_quaternions(1))
oriented, spherical = np.empty(len(dataset)), np.empty(len(dataset))
for batch in make_loader(dataset, 64):
    i, target = batch["index"].numpy(), decoder.target(batch["images"])
    shifts = shift_grid(torch.zeros(len(i), 2), dataset.pixel_size_A, 1, None)
    nothing = 0.5 * target.abs().square().mean(-1)
    for out, vol, rotations in ((oriented, volume, grid), (spherical, average.float(), grid[:1])):
        out[i] = (1 - decoder.shared_pose_loss(rotations, shifts, batch, target, vol).flatten(1).min(1).values
                  / nothing).numpy()
junk = kind >= 0
for name, score in (("oriented", oriented), ("spherical", spherical), ("gain", oriented - spherical)):
    groups = (("particles", kind < 0), ("empty picks", kind == 0), ("blobs", kind == 1))
    spread = "; ".join(f"{label} {np.round(np.quantile(score[sel], [0.05, 0.5, 0.95]), 3)}" for label, sel in groups)
    lowest = score < np.quantile(score, 0.2)
    print(f"{name}: 5/50/95th percentiles {spread}; junk among the lowest 20 %: {lowest[junk].mean():.2f}")
