"""Evaluation of checkpoints on benchmark files (``rlrt eval``: avg@n, pass@k, resumable) and the
method comparison in miniature (``rlrt compare``). Heavy imports (Ray, vLLM, matplotlib) stay
inside the functions that need them."""
