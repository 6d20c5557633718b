from pathlib import Path

import numpy as np
import roma
import torch

from cryopose.evaluate.symmetry import find_symmetry
from cryopose.io.mrc import read_map, write_map
from cryopose.physics.align import MapAlignment
from cryopose.simulation.simulate import SimulationConfig, simulate

torch.set_num_threads(1)
d = Path('demo1')
if not d.exists(): simulate(SimulationConfig(source="demo", box=32, apix=3.0, n=10, snr=1.0, seed=4), d)
v = torch.tensor(np.array(read_map(d / 'ground_truth.mrc').data))
turn = roma.rotvec_to_rotmat(torch.tensor([0, 0, 2 * np.pi / 3], dtype=torch.float64)).numpy()
a = MapAlignment(rotation=turn, shift_px=np.zeros(3), mirrored=False, correlation=1.0)
w = v + a.apply(v) + a.apply(a.apply(v))
write_map('c3.mrc', w.numpy(), 3.0)
print(find_symmetry(w).group)
