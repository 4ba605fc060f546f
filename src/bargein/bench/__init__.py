"""The barge-in benchmark: scenario sets played through a session, measured at the ear."""

from bargein.bench.runner import RunOptions, Stack, default_stack, run_scenario, run_set

__all__ = ["RunOptions", "Stack", "default_stack", "run_scenario", "run_set"]
