"""The plan's new directions that live beside CHRC: A1/A2 SNMA-Light, B2 contrastive encoder.

B1 (learned similarity) and B3 (attention retrieval) change how CHRC retrieves, so they live in
:mod:`hmem.chrc` (``similarity.py``, ``attention.py``). Every direction is a config switch that
is off by default; off, it is not built.
"""
