"""The paper's run configs as recipes: ``configs/paper/<backbone>/<method>.yaml`` enumerated, and
sweeps as lists of override sets. Pure (no NeMo-Run): the NeMo-Run recipes build on this."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PAPER_DIR = REPO_ROOT / "configs" / "paper"


def paper_configs(root: str | Path = PAPER_DIR) -> dict[str, Path]:
    """``{"<backbone>/<method>": path}`` for every method file under ``root`` (backbone.yaml and
    common.yaml are bases, not runs), sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no paper config folder")
    found = {
        f"{path.parent.name}/{path.stem}": path
        for path in root.glob("*/*.yaml")
        if path.stem != "backbone"
    }
    return dict(sorted(found.items()))


def paper_config(name: str, root: str | Path = PAPER_DIR) -> Path:
    """The config file of ``<backbone>/<method>``; KeyError naming the known ones otherwise."""
    configs = paper_configs(root)
    if name not in configs:
        raise KeyError(f"no paper config {name!r}; known: {', '.join(configs)}")
    return configs[name]


def parse_sweep(spec: str) -> tuple[str, list[str]]:
    """``"algorithm.eps_w=0.2,0.5,1.0"`` → ``("algorithm.eps_w", ["0.2", "0.5", "1.0"])``."""
    key, sep, values = spec.partition("=")
    items = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not key.strip() or not items:
        raise ValueError(f"sweep {spec!r}: expected KEY=V1,V2,... (e.g. algorithm.eps_w=0.2,0.5)")
    return key.strip(), items


def sweep_tasks(
    name: str, key: str, values: list[str], run_dir: str | None = None
) -> list[tuple[str, list[str]]]:
    """One ``(task name, overrides)`` per value: ``key=value``, and each task in its own run
    folder (``<run_dir>_<leaf>_<value>``) so that resume=auto never mixes them."""
    leaf = key.rsplit(".", 1)[-1]
    tasks = []
    for value in values:
        overrides = [f"{key}={value}"]
        if run_dir:
            overrides.append(f"trainer.run_dir={run_dir}_{leaf}{value}")
        tasks.append((f"{name}-{leaf}{value}".replace("/", "-"), overrides))
    return tasks
