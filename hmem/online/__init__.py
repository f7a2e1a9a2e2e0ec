"""The leakage-free online protocol: revealed data, the learner, and the runner."""

from hmem.online.learner import OnlineLearner
from hmem.online.runner import RunResult, run_trial
from hmem.online.stream import RevealedSeries

__all__ = ["OnlineLearner", "RevealedSeries", "RunResult", "run_trial"]
