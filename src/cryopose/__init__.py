"""cryopose: ab initio single-particle cryo-EM reconstruction.

Layers, lowest first; a module imports only from its own package and the layers below it (checked by
``tests/test_layers.py``)::

    errors, progress               one-line input errors; progress bars
    geometry                       rotations, the Hopf SO(3) grid and its beam search
    physics                        Fourier grids, CTF, projection, backprojection, FSC, map alignment
    io                             MRC, STAR, .cs, .pkl, the particle dataset, run-directory file names
    models, report, simulation     networks and the Hartley volume; figures and HTML; simulated data sets
    methods                        the two ab initio methods, pseudo-symmetry relaxation, data-set backprojection
    train, evaluate                training loop, checkpoints, distributed runs; comparison with the truth
    jobs                           one module per subcommand
    cli                            argument parsing (``python -m cryopose``: __main__)
"""

__version__ = "0.1.0"
