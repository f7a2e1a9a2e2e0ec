"""Results of searches as pandas tables, the plan's rules as functions, and reports.

Reads the files every trial writes (``metrics.json``, ``curve.csv``, ``config.json``; their
schemas in :mod:`hmem.records`) and Ray's experiment state through :mod:`tune.ray_api`. It never
starts Ray or launches work: :mod:`tune.campaign` does, and asks this package for verdicts.
"""
