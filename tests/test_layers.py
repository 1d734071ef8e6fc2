"""The package's imports only point down its layers, and there are no import cycles.

`LAYERS` below is the one declaration of the layering, bottom first (DESIGN.md §3 states the
directions: pure math imports no distributed code, megatron/ and rollout/ never import each
other, nothing below trainer/ imports it, the CLI and launchers sit on top). The checker
(tests/_import_layers.py) parses every module with `ast` and counts every import, lazy ones
inside functions included; a failure names file:line and both modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from _import_layers import Layer, check_layers, unit_of

import rlrt_megatron

PACKAGE_DIR = Path(rlrt_megatron.__file__).parent

# The modules `cli.py` imports by name (its _COMMAND_MODULES) to register their commands.
COMMAND_MODULES = (
    "trainer.commands",
    "megatron.score_command",
    "evaluation.commands",
    "analysis.commands",
    "launch.plan_command",
)

LAYERS = (
    Layer(
        "leaves",
        ("", "errors", "command_registry", "interfaces", "atomic_files"),
        "import nothing of the package: the (empty) package root, the user-facing errors any "
        "layer may raise, the registry command modules add their `rlrt` commands to, the typing "
        "Protocols of the loop's parts (their data types imported for type checking only), the one "
        "atomic file write every layer uses",
    ),
    Layer(
        "foundation",
        ("configuration", "store_auth", "upstream_warnings"),
        "plumbing every layer may use: YAML/dataclass config machinery (raises errors."
        "ConfigError), store authentication of process groups, upstream-warning filters",
    ),
    Layer(
        "core",
        ("algorithms", "data", "rewards", "transport"),
        "pure, independent building blocks: the paper's tensor math, prompt data, verifiers, "
        "and the weight-transport leaf (bucket format, packing, manifest, broadcast group, CUDA "
        "IPC) that both the engines (receivers) and the cluster (senders) use",
    ),
    Layer(
        "domain",
        ("teacher", "models"),
        "teacher-context selection builds on the algorithms' method registry; models/ (HF Qwen3 "
        "<-> megatron conversion, model construction) is what megatron/ runs",
    ),
    Layer(
        "engines",
        ("megatron", "rollout"),
        "the two engines: the megatron policy actor and the vLLM rollout engine; they never "
        "import each other (cluster/ bridges them)",
    ),
    Layer(
        "cluster",
        ("cluster",),
        "Ray actors, placement and weight sync: puts megatron/ ranks and rollout/ engines together",
    ),
    Layer(
        "applications",
        ("evaluation", "analysis"),
        "what runs on engines and ranks: benchmark evaluation (also used inside training) and the "
        "paper's analyses; independent of each other and of the trainer",
    ),
    Layer(
        "trainer",
        ("trainer",),
        "the RL loop, its run config, checkpoints, in-loop evaluation and `rlrt compare`'s runs",
    ),
    Layer(
        "launch",
        ("launch",),
        "NeMo-Run / Slurm launchers: they start the trainer (as `rlrt train`), from above it",
    ),
    Layer(
        "commands",
        COMMAND_MODULES,
        "the CLI front-ends cli.py loads by name: they parse arguments and may combine any layer "
        "(`rlrt eval --config` reads the trainer's run config); nothing imports them",
    ),
    Layer("cli", ("cli",), "the `rlrt` entry point: the top, imported by nothing in the package"),
)


def test_imports_only_point_down_the_layers_and_have_no_cycles():
    report = check_layers(PACKAGE_DIR, LAYERS)
    if report:
        pytest.fail("\n" + report.text(), pytrace=False)


def test_the_commands_layer_is_what_the_cli_loads():
    """A new command module must be declared here (so it is checked as a CLI front-end)."""
    tree = ast.parse((PACKAGE_DIR / "cli.py").read_text(encoding="utf-8"))
    loaded = next(
        ast.literal_eval(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.AnnAssign) and ast.unparse(node.target) == "_COMMAND_MODULES"
    )
    assert sorted(loaded) == sorted(f"rlrt_megatron.{m}" for m in COMMAND_MODULES)


def _write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


SYNTHETIC_LAYERS = (
    Layer("base", ("", "base"), "bottom: the package root and base.py"),
    Layer("middle", ("left", "right"), "two independent units"),
    Layer("top", ("top",), "top"),
)


def test_a_planted_upward_import_sideways_import_and_cycle_are_reported(tmp_path):
    package = _write_package(
        tmp_path,
        {
            "__init__.py": "",
            "base.py": "def helper():\n    from pkg import top  # lazy, still counted\n",
            "left/__init__.py": "",
            "left/a.py": "from pkg.left import b\nfrom pkg.right import c\n",
            "left/b.py": "import pkg.left.a\n",
            "right/__init__.py": "",
            "right/c.py": "import importlib\n\nimportlib.import_module('pkg.base')\n",
            "top.py": (
                "from typing import TYPE_CHECKING\n"
                "from pkg.left import a\n"
                "if TYPE_CHECKING:\n    from pkg import ghost  # never runs: not counted\n"
            ),
            "ghost.py": "",
        },
    )
    layers = (*SYNTHETIC_LAYERS, Layer("ghost", ("ghost",), "above all"))
    report = check_layers(package, layers)
    text = report.text()
    assert [(i.importer, i.imported, i.line) for i, _, _ in report.upward] == [
        ("pkg.base", "pkg.top", 2)
    ]
    assert "pkg/base.py:2: pkg.base (layer 0 'base') imports pkg.top (layer 2 'top')" in text
    assert [(i.importer, i.imported) for i, _ in report.sideways] == [("pkg.left.a", "pkg.right.c")]
    # base -> top -> left -> right -> base, and left.a <-> left.b inside one subpackage.
    assert [c.nodes for c in report.unit_cycles] == [("base", "top", "left", "right")]
    assert "  base -> top -> left -> right -> base" in text
    assert [c.nodes for c in report.module_cycles] == [("pkg.left.a", "pkg.left.b")]
    assert "  pkg.left.a -> pkg.left.b -> pkg.left.a" in text
    assert "pkg/left/b.py:1: pkg.left.b imports pkg.left.a" in text
    assert "ghost" not in text and not report.unplaced


def test_a_clean_synthetic_package_passes_and_an_unplaced_module_does_not(tmp_path):
    package = _write_package(
        tmp_path,
        {
            "__init__.py": "",
            "base.py": "",
            "left.py": "from . import base\n",
            "right.py": "import importlib\nimportlib.import_module('pkg.base')\n",
            "top.py": "from pkg import left, right\n",
        },
    )
    assert not check_layers(package, SYNTHETIC_LAYERS)
    (package / "stray.py").write_text("")
    report = check_layers(package, SYNTHETIC_LAYERS)
    assert report.unplaced == ["pkg.stray"] and "pkg.stray" in report.text()


def test_units_match_by_the_longest_name():
    units = ("", "evaluation", "evaluation.commands")
    assert unit_of("rlrt_megatron.evaluation.commands", "rlrt_megatron", units) == (
        "evaluation.commands"
    )
    assert unit_of("rlrt_megatron.evaluation.runner", "rlrt_megatron", units) == "evaluation"
    assert unit_of("rlrt_megatron", "rlrt_megatron", units) == ""
    assert unit_of("rlrt_megatron.errors", "rlrt_megatron", units) is None
