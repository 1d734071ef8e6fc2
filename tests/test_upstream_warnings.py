"""The upstream-warning filters drop exactly the harmless messages and pass everything else."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

import pytest

from rlrt_megatron.upstream_warnings import (
    APEX_NORM_WARNING,
    RAY_AUTH_ENABLED,
    RAY_AUTH_LOGGER,
    TE_APEX_WARNINGS,
    VLLM_RELOAD_LOGGER,
    UnloadedLayerFilter,
    install_weight_reload_filter,
    silence_megatron_fallback_warnings,
    silence_ray_auth_notice,
)


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def reload_logger():
    """vLLM's reload logger with a capturing handler, its filters restored afterwards."""
    logger = logging.getLogger(VLLM_RELOAD_LOGGER)
    saved_filters, saved_level = list(logger.filters), logger.level
    capture = _Capture()
    logger.addHandler(capture)
    logger.setLevel(logging.DEBUG)
    yield logger, capture
    logger.removeHandler(capture)
    logger.filters[:] = saved_filters
    logger.setLevel(saved_level)


def _emit_all(logger: logging.Logger) -> None:
    # As vLLM logs it: logger.warning("%s: Failed to load weights", layer.__class__.__name__).
    for layer in ("RotaryEmbedding", "YaRNScalingRotaryEmbedding", "ParallelLMHead"):
        logger.warning("%s: Failed to load weights", layer)
    logger.warning("%s: Failed to load weights", "QKVParallelLinear")
    logger.warning("%s: Failed to load weights", "FourierRotaryEmbedding")
    logger.debug("%s: Delayed processing", "RotaryEmbedding")
    logger.warning("RotaryEmbedding: Failed to load weights (extra)")


def test_tied_model_drops_rope_and_head_only(reload_logger):
    logger, capture = reload_logger
    install_weight_reload_filter(tied_embeddings=True)
    _emit_all(logger)
    assert capture.messages == [
        "QKVParallelLinear: Failed to load weights",
        "FourierRotaryEmbedding: Failed to load weights",
        "RotaryEmbedding: Delayed processing",
        "RotaryEmbedding: Failed to load weights (extra)",
    ]


def test_untied_model_keeps_the_head_warning(reload_logger):
    """Without tied embeddings the head is sent: a head that got nothing is a real failure."""
    logger, capture = reload_logger
    install_weight_reload_filter(tied_embeddings=False)
    _emit_all(logger)
    assert capture.messages[0] == "ParallelLMHead: Failed to load weights"
    assert "RotaryEmbedding: Failed to load weights" not in capture.messages
    assert len(capture.messages) == 5


def test_install_is_idempotent_and_follows_the_model(reload_logger):
    logger, _ = reload_logger
    first = install_weight_reload_filter(tied_embeddings=True)
    assert install_weight_reload_filter(tied_embeddings=True) is first
    ours = [f for f in logger.filters if isinstance(f, UnloadedLayerFilter)]
    assert ours == [first]
    untied = install_weight_reload_filter(tied_embeddings=False)
    ours = [f for f in logger.filters if isinstance(f, UnloadedLayerFilter)]
    assert ours == [untied] and not untied.tied_embeddings


def test_filter_matches_vllms_own_source():
    """The logger name, message format and layer class names are vLLM's (guards an upgrade)."""
    import inspect

    from vllm.model_executor.layers.rotary_embedding import RotaryEmbedding
    from vllm.model_executor.layers.rotary_embedding.yarn_scaling_rope import (
        YaRNScalingRotaryEmbedding,
    )
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead
    from vllm.model_executor.model_loader.reload import layerwise

    assert layerwise.logger.name == VLLM_RELOAD_LOGGER
    source = inspect.getsource(layerwise.finalize_layerwise_processing)
    assert '"%s: Failed to load weights", layer.__class__.__name__' in source
    names = {RotaryEmbedding.__name__, YaRNScalingRotaryEmbedding.__name__, ParallelLMHead.__name__}
    assert names == {"RotaryEmbedding", "YaRNScalingRotaryEmbedding", "ParallelLMHead"}


def _warn(text: str, module: str) -> None:
    warnings.warn_explicit(text, UserWarning, f"/x/{module.replace('.', '/')}.py", 1, module=module)


@pytest.mark.parametrize("cpu_torch", [True, False])
def test_megatron_filters_drop_exact_texts_from_megatron_only(cpu_torch):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_megatron_fallback_warnings(cpu_torch=cpu_torch)
        _warn(APEX_NORM_WARNING, "megatron.core.models.backends")
        _warn(APEX_NORM_WARNING, "mbridge.models.internvl3.transformer_layer")
        for text in TE_APEX_WARNINGS:
            _warn(text, "megatron.core.optimizer")
        # Passed: another text, a longer text, the same text from another package.
        _warn("Apex is not installed. Falling back to something else", "megatron.core.x")
        _warn(APEX_NORM_WARNING + " (and more)", "megatron.core.x")
        _warn(APEX_NORM_WARNING, "rlrt_megatron.megatron.actor")
    shown = [str(w.message) for w in caught]
    expected_te = [] if cpu_torch else list(TE_APEX_WARNINGS)
    assert shown == [
        *expected_te,
        "Apex is not installed. Falling back to something else",
        APEX_NORM_WARNING + " (and more)",
        APEX_NORM_WARNING,
    ]


def _import_stderr(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


@pytest.mark.skipif(
    __import__("torch").version.cuda is not None, reason="the CPU stack's warnings (CPU torch)"
)
def test_real_megatron_imports_are_quiet_after_our_package():
    """megatron-core's real import-time warnings: shown by a bare import, gone once our
    `rlrt_megatron.megatron` package (what the workers import) came first."""
    imports = "import megatron.core.optimizer, megatron.core.models.gpt.gpt_layer_specs"
    bare = _import_stderr(imports)
    for text in (APEX_NORM_WARNING, *TE_APEX_WARNINGS):
        assert text in bare
    quiet = _import_stderr(f"import rlrt_megatron.megatron; {imports}")
    assert "Apex" not in quiet, quiet


def test_ray_auth_notice_is_dropped_and_the_disabled_warning_kept():
    """Ray's own functions log through the filtered logger: the 'enabled' notice goes, the
    'disabled' warning (a real exposure) stays; installing twice adds one filter."""
    from ray._private.authentication import authentication_token_setup as setup

    assert setup.logger.name == RAY_AUTH_LOGGER
    capture = _Capture()
    setup.logger.addHandler(capture)
    try:
        silence_ray_auth_notice()
        silence_ray_auth_notice()
        setup._warn_token_auth_enabled()
        setup._warn_token_auth_disabled()
    finally:
        setup.logger.removeHandler(capture)
        for existing in list(setup.logger.filters):
            setup.logger.removeFilter(existing)
    assert len(capture.messages) == 1
    assert capture.messages[0].startswith("Token authentication is disabled")
    assert not any(m.startswith(RAY_AUTH_ENABLED) for m in capture.messages)
