"""CHRC: retrieval of remembered past errors to correct a base forecast (P2, P7, P8)."""

from hmem.chrc.corrector import (
    CHRC,
    CHRCBank,
    Correction,
    corrected_forecast,
    horizon_weights,
    pogt_length,
    soft_gate,
)
from hmem.chrc.encoder import POGTEncoder
from hmem.chrc.memory import ErrorMemory, Retrieved

__all__ = ["CHRC", "CHRCBank", "Correction", "ErrorMemory", "POGTEncoder", "Retrieved",
           "corrected_forecast", "horizon_weights", "pogt_length", "soft_gate"]
