"""Evaluation of checkpoints on benchmark files (``rlrt eval``: avg@n, pass@k, resumable), also
used inside training. The method comparison (``rlrt compare``, registered in `commands`) trains
runs, so its runner lives with the trainer (`rlrt_megatron.trainer.compare`). Heavy imports (Ray,
vLLM, matplotlib) stay inside the functions that need them."""
