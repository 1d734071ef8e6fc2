"""The megatron-core policy actor: model, parallel layout, scoring, update, checkpoints.

Importing this package silences megatron-core's import-time Apex / Transformer Engine fallback
warnings by their exact text (every module here imports megatron-core lazily, after this ran;
why they are harmless: `rlrt_megatron.upstream_warnings`).
"""

from rlrt_megatron.upstream_warnings import silence_megatron_fallback_warnings

silence_megatron_fallback_warnings()
