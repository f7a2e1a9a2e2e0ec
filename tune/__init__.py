"""The Ray Tune service around :mod:`hmem`: the trainable, the launcher, the artefacts every
trial of a search shares, the staged campaign and job submission.

The only package that imports Ray, and its version-specific calls go through
:mod:`tune.ray_api`. Each trial writes the same results folder as ``hmem run``.
"""
