"""HF Qwen3 <-> Megatron: checkpoint validation (``qwen3_checkpoint``), weight conversion via
mbridge (``qwen3_bridge``), model construction and export (``qwen3_megatron``), and a tiny local
checkpoint for tests (``tiny``). Submodules are imported explicitly: megatron is heavy."""
