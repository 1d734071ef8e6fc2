"""Every bad setting or input is refused before anything starts: one line naming the key or file,
exit status 2, in seconds, with no Ray started; a fresh start over an old run is refused; and
``resume=auto`` falls back past a corrupt newest checkpoint."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rlrt_megatron.cli import main
from rlrt_megatron.data.synthetic import write_arithmetic_splits
from rlrt_megatron.megatron.checkpoint import META_FILE, find_loadable, step_dir_name
from rlrt_megatron.megatron.safe_state import save_state
from rlrt_megatron.trainer.config import load_run_config
from rlrt_megatron.trainer.preflight import PreflightError, clear_run_outputs, preflight

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    train_file, test_file = write_arithmetic_splits(folder, num_train=8, num_test=4, seed=1)
    return train_file, test_file


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory, tiny_qwen3_dir):
    """Model folders that are wrong in one way each."""
    import shutil

    root = tmp_path_factory.mktemp("bad_models")
    no_weights = root / "no_weights"
    shutil.copytree(tiny_qwen3_dir, no_weights)
    for f in no_weights.glob("*.safetensors"):
        f.unlink()
    truncated = root / "truncated"
    shutil.copytree(tiny_qwen3_dir, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    garbage = root / "garbage_header"
    shutil.copytree(tiny_qwen3_dir, garbage)
    (garbage / "model.safetensors").write_bytes(b"\xff" * 64)
    llama = root / "llama"
    shutil.copytree(tiny_qwen3_dir, llama)
    config = json.loads((llama / "config.json").read_text())
    config["architectures"] = ["LlamaForCausalLM"]
    (llama / "config.json").write_text(json.dumps(config))
    sliding = root / "sliding_window"
    shutil.copytree(tiny_qwen3_dir, sliding)
    config = json.loads((sliding / "config.json").read_text())
    config["use_sliding_window"] = True
    (sliding / "config.json").write_text(json.dumps(config))
    return {
        "sliding": sliding,
        "no_weights": no_weights,
        "truncated": truncated,
        "garbage": garbage,
        "llama": llama,
        "missing": root / "does_not_exist",
    }


@pytest.fixture
def config_file(tmp_path, tiny_qwen3_dir, data_files):
    train_file, test_file = data_files
    path = tmp_path / "run.yaml"
    path.write_text(
        "\n".join(
            [
                f"model: {{path: {tiny_qwen3_dir}}}",
                f"data: {{train_files: [{train_file}], eval_files: [{test_file}],"
                " prompts_per_step: 2, rollouts_per_prompt: 4, max_prompt_tokens: 128}",
                f"trainer: {{steps: 2, run_dir: {tmp_path / 'run'}, console: false}}",
                "rollout: {max_response_tokens: 16}",
            ]
        )
        + "\n"
    )
    return path


def _fake_checkpoint(checkpoints: Path, step: int) -> Path:
    path = checkpoints / step_dir_name(step)
    path.mkdir(parents=True)
    (path / META_FILE).write_text("{}")
    return path


def _bad_settings(tmp_path: Path, bad_models: dict, tiny_qwen3_dir: Path) -> list:
    """(overrides, expected text in the one-line error)."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n")
    all_bad = tmp_path / "all_bad.jsonl"
    all_bad.write_text('{"question": "1+1"}\n{"nothing": 1}\n')
    old_run = tmp_path / "old_run"
    _fake_checkpoint(old_run / "checkpoints", 2)
    return [
        (["trainer.steps=0"], "trainer.steps=0: must be >= 1"),
        (["trainer.steps=-3"], "trainer.steps=-3: must be >= 1"),
        (["data.rollouts_per_prompt=1"], "data.rollouts_per_prompt=1: must be >= 2"),
        (["trainer.save_every=0"], "trainer.save_every=0: must be >= 1"),
        (["trainer.keep_last=0"], "trainer.keep_last=0: must be >= 1"),
        (["rollout.max_response_tokens=-5"], "rollout.max_response_tokens=-5: must be > 0"),
        (["data.max_prompt_tokens=0"], "data.max_prompt_tokens=0: must be > 0"),
        (["eval.max_response_tokens=0"], "eval.max_response_tokens=0: must be > 0"),
        (["data.prompts_per_step=0"], "data.prompts_per_step=0: must be >= 1"),
        (["rollout.top_p=0"], "rollout.top_p=0.0: must be in (0, 1]"),
        (["actor.mini_batches=64"], "actor.mini_batches=64: more mini-batches than the 8"),
        # refused at load by the component's own config (AdamWConfig is actor.optimizer)
        (["actor.optimizer.lr=-1e-6"], "actor.optimizer: lr must be > 0"),
        (["reward.name=mathh"], "reward.name: unknown reward 'mathh'"),
        (["actor.parallel.tensor_parallel=3"], "TP=3 does not divide num_attention_heads=4"),
        (["actor.parallel.pipeline_parallel=4"], "PP=4 does not divide num_hidden_layers=2"),
        (["rollout.tensor_parallel=3"], "rollout.tensor_parallel=3 does not divide"),
        ([f"model.path={bad_models['no_weights']}"], "has no *.safetensors weights"),
        ([f"model.path={bad_models['truncated']}"], "truncated safetensors file"),
        ([f"model.path={bad_models['garbage']}"], "not a readable safetensors file"),
        ([f"model.path={bad_models['llama']}"], "only Qwen3ForCausalLM"),
        ([f"model.path={bad_models['missing']}"], "is not a directory"),
        (
            [f"model.path={bad_models['sliding']}", "rollout.backend=in_rank"],
            "use_sliding_window=True is not supported",
        ),
        (
            ["rollout.backend=in_rank", "rollout.mode=one_step_off",
             "rollout.placement=disaggregated"],
            "rollout.backend=in_rank generates inside the trainer ranks",
        ),
        ([f"trainer.resume={tmp_path / 'nowhere' / 'step_00000004'}"], "no such checkpoint"),
        ([f"data.train_files=[{tmp_path / 'missing.jsonl'}]"], "data.train_files[0]"),
        ([f"data.train_files=[{empty}]"], "the file is empty"),
        ([f"data.eval_files=[{tmp_path}]"], "data.eval_files[0]"),
        (["trainer.resume=never", f"trainer.run_dir={old_run}"], "holds checkpoints"),
        (["trainer.overwrite=true"], "trainer.overwrite=true needs trainer.resume=never"),
        (["trainer.stepz=3"], "did you mean 'trainer.steps'"),
        # Found when the data is read (still before Ray): rows, not the file.
        ([f"data.train_files=[{blank}]"], "the file holds no rows"),
        (
            [f"data.train_files=[{all_bad}]", "data.on_bad_row=skip"],
            "all 2 rows are malformed",
        ),
        ([f"data.train_files=[{all_bad}]"], "all_bad.jsonl"),
    ]


def test_each_bad_setting_fails_fast_with_one_line_and_status_2(
    tmp_path, bad_models, tiny_qwen3_dir, config_file, capsys, monkeypatch
):
    """In-process through `main` (the subprocess test below covers the process boundary)."""
    import rlrt_megatron.cluster.ray_cluster as ray_cluster

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started for a bad setting")

    monkeypatch.setattr(ray_cluster, "init_ray", no_ray)
    cases = _bad_settings(tmp_path, bad_models, tiny_qwen3_dir)
    slowest = 0.0
    for overrides, expected in cases:
        start = time.perf_counter()
        code = main(["train", str(config_file), *overrides])
        elapsed = time.perf_counter() - start
        slowest = max(slowest, elapsed)
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("rlrt train: error:")]
        with capsys.disabled():  # the record of each case (pytest -s shows it)
            print(f"{' '.join(overrides)} | rc {code} | {elapsed:.2f} s | {err.strip()}")
        assert code == 2, (overrides, err)
        assert len(lines) == 1 and expected in lines[0], (overrides, err)
        assert "Traceback" not in err
        assert elapsed < 5.0, (overrides, elapsed)
    assert len(cases) >= 30


def test_bad_settings_in_a_subprocess_exit_2_without_starting_ray(
    tmp_path, bad_models, tiny_qwen3_dir, config_file
):
    """`rlrt train` as a user runs it. Ray would create its session under RAY_TMPDIR: that folder
    must stay absent. The limit is on the child's CPU time (this machine's wall clock depends on
    the other jobs sharing its cores); the wall time is printed for the record."""
    ray_tmp = tmp_path / "ray_tmp"
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "PYTHONPATH": str(REPO)}
    cases = [
        (["trainer.steps=0"], "trainer.steps=0: must be >= 1"),
        (["actor.parallel.tensor_parallel=3"], "TP=3 does not divide"),
        ([f"model.path={bad_models['truncated']}"], "truncated safetensors file"),
        (["reward.name=mathh"], "unknown reward"),
    ]
    for overrides, expected in cases:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "rlrt_megatron.cli", "train", str(config_file), *overrides],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        print(f"{overrides}: rc {result.returncode}, cpu {cpu:.2f} s, wall {wall:.2f} s")
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("rlrt train: error:")
        assert expected in result.stderr and "Traceback" not in result.stderr
        assert cpu < 5.0, (overrides, cpu)
        assert not ray_tmp.exists(), "Ray started"  # it would hold ray/session_*


def test_a_valid_config_passes_and_resume_never_is_accepted(config_file, tmp_path):
    config = load_run_config(config_file, ["trainer.resume=never"])
    checked = preflight(config)
    assert checked.resume_from is None and not checked.clear_run_folder
    assert preflight(load_run_config(config_file)).resume_from is None  # auto, nothing yet


def test_overwrite_clears_the_old_run_and_only_its_outputs(config_file, tmp_path):
    run = tmp_path / "run"
    _fake_checkpoint(run / "checkpoints", 3)
    for name in ("metrics.jsonl", "summary.json", "eval_before.json"):
        (run / name).write_text("{}\n")
    (run / "tensorboard").mkdir()
    (run / "my_notes.txt").write_text("keep me")
    fresh = load_run_config(config_file, ["trainer.resume=never"])
    with pytest.raises(PreflightError, match="holds checkpoints .newest step_00000003"):
        preflight(fresh)
    checked = preflight(
        load_run_config(config_file, ["trainer.resume=never", "trainer.overwrite=true"])
    )
    assert checked.clear_run_folder
    removed = clear_run_outputs(run)
    assert sorted(removed) == sorted(
        ["checkpoints", "metrics.jsonl", "summary.json", "eval_before.json", "tensorboard"]
    )
    assert sorted(p.name for p in run.iterdir()) == ["my_notes.txt"]
    assert preflight(fresh).resume_from is None  # now a fresh start is fine


def _real_checkpoint(checkpoints: Path, step: int) -> Path:
    """A checkpoint with the files a real one has (meta, JSON extra, torch_dist shards and
    metadata, common.pt), written without megatron: enough for the file checks."""
    import torch.distributed.checkpoint as dcp

    path = checkpoints / step_dir_name(step)
    state = {"w": torch.full((4, 8), float(step)), "b": torch.arange(16.0)}
    dcp.save(state, checkpoint_id=str(path), no_dist=True)
    torch.save({"scheduler": {"num_steps": step}}, path / "common.pt")
    save_state({"step": step, "data": {"position": step}}, path / "extra.json")
    meta = {
        "format_version": 2,
        "step": step,
        "layout": {"world_size": 1},
        "has_optimizer": True,
        "has_scheduler": True,
        "has_rank_extra": False,
    }
    (path / META_FILE).write_text(json.dumps(meta))
    (checkpoints / "latest").write_text(path.name + "\n")
    return path


@pytest.mark.parametrize("damage", ["truncated_shard", "missing_shard", "garbage_extra", "pickle"])
def test_resume_auto_falls_back_past_a_corrupt_newest_checkpoint(
    config_file, tmp_path, damage, caplog
):
    checkpoints = tmp_path / "run" / "checkpoints"
    older = _real_checkpoint(checkpoints, 2)
    newest = _real_checkpoint(checkpoints, 4)
    shard = next(newest.glob("*.distcp"))
    if damage == "truncated_shard":
        shard.write_bytes(shard.read_bytes()[:10])
        reason = "is truncated"
    elif damage == "missing_shard":
        shard.unlink()
        reason = "is missing"
    elif damage == "garbage_extra":
        (newest / "extra.json").write_text('{"step": 4, "da')
        reason = "not a readable checkpoint state file"
    else:
        import pickle

        (newest / ".metadata").write_bytes(pickle.dumps(print))
        reason = "refused to load"
    found, skipped = find_loadable(checkpoints)
    assert found == older
    assert [p for p, _ in skipped] == [newest] and reason in skipped[0][1]
    with caplog.at_level("WARNING"):
        checked = preflight(load_run_config(config_file))
    assert checked.resume_from == older
    assert f"skipping {newest}" in caplog.text and reason in caplog.text


def test_resume_auto_refuses_when_no_checkpoint_loads(config_file, tmp_path):
    """Starting fresh beside unreadable checkpoints would mix two runs in one folder."""
    checkpoints = tmp_path / "run" / "checkpoints"
    only = _real_checkpoint(checkpoints, 2)
    next(only.glob("*.distcp")).unlink()
    with pytest.raises(PreflightError, match="no checkpoint in .* loads .step_00000002: .*missing"):
        preflight(load_run_config(config_file))


def test_the_loop_falls_back_when_a_checkpoint_fails_to_load(config_file, tmp_path):
    """A failure only the load itself finds (in the ranks) moves on to the next older intact
    checkpoint under resume=auto, and is raised for an explicit path."""
    from rlrt_megatron.trainer.loop import _load_resume_checkpoint

    checkpoints = tmp_path / "run" / "checkpoints"
    older = _real_checkpoint(checkpoints, 2)
    newest = _real_checkpoint(checkpoints, 4)
    for step in (2, 4):  # an HF export beside each, as trainer.save_hf writes it
        (checkpoints / step_dir_name(step) / "hf").mkdir()
        (checkpoints / step_dir_name(step) / "hf" / "config.json").write_text("{}")

    class Policy:
        def __init__(self) -> None:
            self.calls: list[tuple[str, str]] = []

        def run_all(self, fn, path):
            self.calls.append((fn.__name__, Path(path).name))
            if Path(path) == newest:
                raise RuntimeError("shard read failed on rank 0")
            return [{"step": int(Path(path).name.split("_")[1])}]

    class Run:
        policy = Policy()

    config = load_run_config(config_file)
    path, extra = _load_resume_checkpoint(config, Run, newest)
    assert path == older and extra == {"step": 2}
    explicit = load_run_config(config_file, [f"trainer.resume={newest}"])
    with pytest.raises(RuntimeError, match="shard read failed"):
        _load_resume_checkpoint(explicit, Run, newest)


def test_a_checkpoint_without_its_hf_export_gets_it_on_resume(config_file, tmp_path):
    """A kill during the HF export leaves step_N without hf/: resuming writes it."""
    from rlrt_megatron.trainer.loop import _load_resume_checkpoint

    checkpoints = tmp_path / "run" / "checkpoints"
    newest = _real_checkpoint(checkpoints, 4)
    (newest / ".incomplete-hf").mkdir()  # what the interrupted export left
    calls = []

    class Policy:
        def run_all(self, fn, path):
            calls.append((fn.__name__, Path(path)))
            return [{"step": 4}]

    class Run:
        policy = Policy()

    _load_resume_checkpoint(load_run_config(config_file), Run, newest)
    assert calls == [("load_on_rank", newest), ("export_hf_on_rank", newest / "hf")]
    calls.clear()
    _load_resume_checkpoint(load_run_config(config_file, ["trainer.save_hf=false"]), Run, newest)
    assert calls == [("load_on_rank", newest)]


def test_compile_elementwise_without_a_cpp_compiler_is_refused(config_file, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no compiler on it
    monkeypatch.delenv("CXX", raising=False)
    config = load_run_config(config_file, ["actor.compile_elementwise=true"])
    with pytest.raises(PreflightError, match="actor.compile_elementwise=true on CPU ranks needs"):
        preflight(config)
    gpu = load_run_config(config_file, ["actor.compile_elementwise=true", "actor.gpus_per_rank=1"])
    from rlrt_megatron.trainer.preflight import check_compiler

    check_compiler(gpu)  # GPU ranks compile with Triton: no C++ compiler asked for
