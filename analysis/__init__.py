"""Results of searches as pandas tables, the plan's rules as functions, and reports.

It arrives with the analysis issue and reads the files every trial writes (``metrics.json``,
``curve.csv``, ``config.json``) through Ray's own result loaders.
"""
