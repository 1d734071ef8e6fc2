"""The paper's analyses as library functions: why reversed-teacher weighting works.

The statistics here are pure functions (tensors or plain Python); the commands that run models to
produce their inputs build on the scoring path and the rollout engines.
"""
