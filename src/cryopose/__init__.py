"""cryopose: ab initio single-particle cryo-EM reconstruction.

Layers (arrows point down only): ``cli`` -> ``methods``/``train`` -> ``models`` -> ``physics``/``geometry``;
``io`` reads and writes files and knows nothing of models.
"""

__version__ = "0.1.0"
