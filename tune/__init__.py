"""The Ray Tune service around :mod:`hmem`: trainable, launcher and shared artefacts.

The only package that imports Ray. It arrives with the tune issue; until then a trial runs
in-process with ``hmem run``, whose results folder this package will produce for every trial.
"""
