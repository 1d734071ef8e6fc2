"""Precision / FP8 / context-parallel config: the mapping to megatron-core and start-up checks."""

from __future__ import annotations

import pytest
import torch

from rlrt_megatron.megatron.parallel import ParallelConfig
from rlrt_megatron.megatron.precision import (
    FP8_RECIPES,
    PrecisionConfig,
    PrecisionUnavailableError,
    RuntimeCapabilities,
    check_precision_runtime,
    check_sequence_length,
)

H100 = RuntimeCapabilities(
    cuda_available=True,
    compute_capability=(9, 0),
    transformer_engine_version="2.8.0",
    device_name="NVIDIA H100 80GB HBM3",
)
CPU_ONLY = RuntimeCapabilities(
    cuda_available=False, compute_capability=None, transformer_engine_version=None
)


def _megatron_config(overrides: dict):
    from megatron.core.transformer import TransformerConfig

    return TransformerConfig(
        **{"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, **overrides}
    )


def test_default_is_bf16_without_fp8_or_cp():
    config = PrecisionConfig()
    assert config.torch_dtype == torch.bfloat16 and not config.fp8
    built = _megatron_config(config.transformer_config_overrides())
    assert built.bf16 and built.params_dtype == torch.bfloat16
    assert built.fp8 is None and built.context_parallel_size == 1
    check_precision_runtime(config, capabilities=CPU_ONLY)  # nothing special needed


def test_fp32_maps_to_megatron_fp32():
    built = _megatron_config(PrecisionConfig(dtype="fp32").transformer_config_overrides())
    assert not built.bf16 and built.params_dtype == torch.float32


@pytest.mark.parametrize("recipe", FP8_RECIPES)
def test_fp8_recipes_map_to_megatron_fields(recipe):
    config = PrecisionConfig(
        fp8_recipe=recipe,
        fp8_format="e4m3",
        fp8_margin=1,
        fp8_amax_history_len=16,
        first_last_layers_bf16=recipe != "delayed",
    )
    built = _megatron_config(config.transformer_config_overrides())  # megatron accepts them
    assert built.fp8 == "e4m3" and built.fp8_recipe == recipe and built.fp8_margin == 1
    assert built.first_last_layers_bf16 == (recipe != "delayed")
    # The amax history exists only for delayed scaling; other recipes keep megatron's default.
    assert built.fp8_amax_history_len == (16 if recipe == "delayed" else 1)


def test_context_parallel_maps_to_config_and_parallel_state_arguments():
    config = PrecisionConfig(context_parallel=2, cp_comm_type="a2a")
    built = _megatron_config(config.transformer_config_overrides())
    assert built.context_parallel_size == 2 and built.cp_comm_type == "a2a"
    parallel = ParallelConfig(tensor_parallel=2, pipeline_parallel=2)
    assert config.model_parallel_kwargs(parallel) == {
        "tensor_model_parallel_size": 2,
        "pipeline_model_parallel_size": 2,
        "context_parallel_size": 2,
    }
    assert config.data_parallel(parallel, 16) == 2
    with pytest.raises(ValueError, match=r"TP\*PP\*CP = 2\*2\*2 = 8"):
        config.data_parallel(parallel, 12)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dtype": "fp16"}, "dtype must be one of"),
        ({"fp8_recipe": "fp8"}, "fp8_recipe must be 'none' or one of"),
        ({"fp8_recipe": "delayed", "dtype": "fp32"}, "needs dtype='bf16'"),
        ({"fp8_format": "e5m2"}, "fp8_format"),
        ({"fp8_amax_history_len": 0}, "fp8_amax_history_len"),
        ({"fp8_recipe": "delayed", "first_last_layers_bf16": True}, "other than 'delayed'"),
        ({"context_parallel": 0}, "context_parallel must be a positive integer"),
        ({"cp_comm_type": "ring"}, "cp_comm_type"),
    ],
)
def test_invalid_configs_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PrecisionConfig(**kwargs)


def test_this_machine_rejects_fp8_naming_what_is_missing_and_accepts_cp():
    """Uses the real detection: on a CPU machine without Transformer Engine FP8 is refused with
    the reason; context parallelism needs neither (the SDPA core attention's CP)."""
    caps = RuntimeCapabilities.detect()
    check_precision_runtime(PrecisionConfig(context_parallel=2))
    if caps.cuda_available and caps.transformer_engine_version is not None:
        pytest.skip("this machine has CUDA and Transformer Engine")
    with pytest.raises(PrecisionUnavailableError) as info:
        check_precision_runtime(PrecisionConfig(fp8_recipe="tensorwise", context_parallel=2))
    message = str(info.value)
    assert "FP8 (tensorwise recipe)" in message and "context parallelism" not in message
    if caps.transformer_engine_version is None:
        assert "Transformer Engine" in message
    if not caps.cuda_available:
        assert "CUDA is not available" in message


@pytest.mark.parametrize(
    ("caps", "config", "message"),
    [
        (CPU_ONLY, PrecisionConfig(fp8_recipe="delayed"), "needs a CUDA GPU"),
        (
            RuntimeCapabilities(True, (8, 0), "2.8.0", "NVIDIA A100"),
            PrecisionConfig(fp8_recipe="delayed"),
            "compute capability >= 8.9; NVIDIA A100 has 8.0",
        ),
        (H100, PrecisionConfig(fp8_recipe="mxfp8"), "compute capability >= 10.0"),
        (
            RuntimeCapabilities(True, (9, 0), "2.1.0", "H100"),
            PrecisionConfig(fp8_recipe="blockwise"),
            "Transformer Engine >= 2.3, found 2.1.0",
        ),
    ],
)
def test_missing_capabilities_are_named(caps, config, message):
    with pytest.raises(PrecisionUnavailableError, match=message):
        check_precision_runtime(config, capabilities=caps)


def test_supported_setups_pass_and_layout_is_checked():
    for recipe in ("delayed", "tensorwise", "blockwise"):
        check_precision_runtime(PrecisionConfig(fp8_recipe=recipe), capabilities=H100)
    config = PrecisionConfig(fp8_recipe="delayed", context_parallel=2)
    check_precision_runtime(
        config, parallel=ParallelConfig(tensor_parallel=2), world_size=8, capabilities=H100
    )
    with pytest.raises(ValueError, match="not divisible"):
        check_precision_runtime(
            config, parallel=ParallelConfig(tensor_parallel=2), world_size=6, capabilities=H100
        )


def test_sequence_length_constraints():
    check_sequence_length(PrecisionConfig(context_parallel=2), 4096, tensor_parallel=2)
    with pytest.raises(ValueError, match="divisible by 2\\*CP = 4"):
        check_sequence_length(PrecisionConfig(context_parallel=2), 4098, tensor_parallel=1)
    with pytest.raises(ValueError, match="multiple of 16\\*TP\\*CP = 32"):
        check_sequence_length(PrecisionConfig(fp8_recipe="delayed"), 48, tensor_parallel=2)


@pytest.mark.gpu
def test_fp8_forward_runs_with_transformer_engine(monkeypatch):
    """Needs CUDA and Transformer Engine: a small GPT with the TE layer spec, one forward in
    bf16 and one with FP8 (delayed scaling) on the same weights; the FP8 logits stay close."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_layer_with_transformer_engine_spec,
    )

    from rlrt_megatron.megatron.launcher import free_port
    from rlrt_megatron.megatron.parallel import destroy_parallel, initialize_parallel

    caps = RuntimeCapabilities.detect()
    if caps.transformer_engine_version is None:
        pytest.skip("Transformer Engine is not importable on this GPU machine")
    for name, value in dict(
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
    ).items():
        monkeypatch.setenv(name, value)
    initialize_parallel(ParallelConfig())
    try:
        from megatron.core import tensor_parallel

        tokens = torch.randint(0, 1024, (2, 128), device="cuda")
        positions = torch.arange(128, device="cuda").expand(2, -1)
        outputs, reference_state = {}, None
        for recipe in ("none", "delayed"):
            config = PrecisionConfig(fp8_recipe=recipe)
            check_precision_runtime(config)
            tensor_parallel.model_parallel_cuda_manual_seed(0)
            model = (
                GPTModel(
                    config=_megatron_config(
                        {
                            **config.transformer_config_overrides(),
                            "hidden_size": 256,
                            "num_attention_heads": 8,
                            "ffn_hidden_size": 1024,
                            "hidden_dropout": 0.0,
                            "attention_dropout": 0.0,
                        }
                    ),
                    transformer_layer_spec=get_gpt_layer_with_transformer_engine_spec(),
                    vocab_size=1024,
                    max_sequence_length=128,
                )
                .cuda()
                .eval()
            )
            if reference_state is None:  # the FP8 model gets the bf16 model's weights
                reference_state = {
                    k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")
                }
            else:
                model.load_state_dict(reference_state, strict=False)
            with torch.no_grad():
                outputs[recipe] = model(tokens, positions, None).float()
        assert torch.isfinite(outputs["delayed"]).all()
        error = (outputs["delayed"] - outputs["none"]).abs().mean() / outputs["none"].abs().mean()
        assert 0 < error.item() < 0.1  # FP8 changes the numbers, but only a little
    finally:
        destroy_parallel()
