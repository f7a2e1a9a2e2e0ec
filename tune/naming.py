"""Trial names in Tune's table, TensorBoard and the results folder: ``variant-dataset-sSEED``.

A module of its own, importing nothing heavy: Ray stores these two functions in the experiment's
state by reference, and every reader of the state (``hmem report``, a resume) imports this module
to load it.
"""

from __future__ import annotations

from hmem.spaces import Cell


def trial_name(trial) -> str:
    """Readable trial names in Tune's table and TensorBoard: variant-dataset-sSEED."""
    label = Cell(**trial.config["cell"]).label()
    return label if "sampled" not in trial.config else f"{label}-{trial.trial_id}"


def trial_dirname(trial) -> str:
    return f"{Cell(**trial.config['cell']).label()}_{trial.trial_id}"
