"""The algorithm core stays pure tensor math: no process groups, engines or cluster code."""

import ast
from pathlib import Path

import pytest

import rlrt_megatron

FORBIDDEN = ("torch.distributed", "megatron", "vllm", "ray", "transformer_engine")
PACKAGE = Path(rlrt_megatron.__file__).parent


@pytest.mark.parametrize("subpackage", ["algorithms", "teacher"])
def test_no_distributed_or_engine_imports(subpackage):
    offenders = []
    for path in sorted((PACKAGE / subpackage).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            for name in names:
                if any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
                    offenders.append(f"{path.name}: {name}")
            if isinstance(node, ast.Attribute) and ast.unparse(node).startswith(
                "torch.distributed"
            ):
                offenders.append(f"{path.name}: {ast.unparse(node)}")
    assert offenders == []
