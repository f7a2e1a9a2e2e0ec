"""H-Mem: a frozen, pretrained forecaster plus CHRC, a retrieval corrector of its errors, run under
a leakage-free online protocol with delayed feedback."""

__version__ = "0.1.0"
