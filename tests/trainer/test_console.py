"""The quiet console (issue 16): actors' output into files of the run's logs/ folder, `--verbose`,
the package's phase lines on stdout. No Ray here: the redirection runs in a plain subprocess
(it rewires file descriptors 1 and 2, which pytest's own capture holds in this process)."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

from rlrt_megatron.cli import build_parser
from rlrt_megatron.cluster.actor_logs import actor_log_file, actor_logs
from rlrt_megatron.trainer.commands import configure_console


def test_actor_log_files_exist_only_inside_a_scope(tmp_path):
    assert actor_log_file("engine_0") is None
    with actor_logs(tmp_path / "logs") as folder:
        assert folder.is_dir()
        assert actor_log_file("engine_0") == str(tmp_path / "logs" / "engine_0.log")
        with actor_logs(None):  # --verbose inside: nothing redirected
            assert actor_log_file("rank_0") is None
        assert actor_log_file("rank_1") == str(tmp_path / "logs" / "rank_1.log")
    assert actor_log_file("engine_0") is None


def test_redirect_catches_python_c_level_and_child_output(tmp_path):
    log = tmp_path / "rank_0.log"
    script = textwrap.dedent(
        f"""
        import logging, os, subprocess, sys, warnings
        from rlrt_megatron.cluster.actor_logs import redirect_output
        redirect_output({str(log)!r})
        print("python stdout")
        logging.getLogger("lib").warning("a library warning")
        warnings.warn("a python warning")
        os.write(2, b"fd 2 directly\\n")
        subprocess.run([sys.executable, "-c", "print('a child process')"], check=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""  # nothing reached the console
    text = log.read_text()
    assert text.startswith("==== rank_0: pid")
    for line in ("python stdout", "a library warning", "a python warning", "fd 2 directly"):
        assert line in text, (line, text)
    assert "a child process" in text
    # A replaced actor appends: the first one's lines stay.
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    assert log.read_text().count("==== rank_0: pid") == 2


def test_train_and_quickstart_take_verbose():
    parser = build_parser()
    assert parser.parse_args(["train", "run.yaml", "trainer.steps=2"]).verbose is False
    assert parser.parse_args(["train", "run.yaml", "--verbose"]).verbose is True
    assert parser.parse_args(["quickstart", "--verbose", "trainer.steps=2"]).verbose is True
    assert parser.parse_args(["quickstart"]).verbose is False


def test_quiet_console_shows_the_package_lines_on_stdout(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # what quiet sets: undone after
    configure_console(verbose=False)
    configure_console(verbose=False)  # twice: still one handler
    log = logging.getLogger("rlrt_megatron.trainer.loop")
    log.info("evaluating before training: 4 held-out problems")
    log.warning("resume=auto: skipped one")
    logging.getLogger("rlrt_megatron.trainer.loop").debug("not shown")
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "evaluating before training: 4 held-out problems",
        "warning: resume=auto: skipped one",
    ]
