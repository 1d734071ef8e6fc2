"""Launching on clusters: the `rlrt plan` estimate (pure, no extra dependencies) and NeMo-Run
recipes (:mod:`rlrt_megatron.launch.nemo`, needs the optional ``launch`` extra: nemo-run)."""
