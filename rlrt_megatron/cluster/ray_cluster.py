"""Joining or starting the one Ray cluster a run uses."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class RayConfig:
    address: str | None = None
    """An existing cluster ("auto" on a node of a started cluster), or None to start a local one."""
    num_cpus: int | None = None
    """CPUs a *local* cluster offers (None: all of the machine's); ignored when joining."""
    include_dashboard: bool = False
    """Ray 2.60's dashboard wants an auth token; it stays off unless asked for, and then listens
    on loopback only."""


def init_ray(config: RayConfig | None = None, *, quiet: bool = False) -> None:
    """Connect to (or start) Ray once per process; a second call is a no-op.

    ``quiet`` (`rlrt train` / `rlrt quickstart` without ``--verbose``): the actors' output is not
    forwarded to this console (the run's actors write theirs to ``<run_dir>/logs/``:
    `rlrt_megatron.cluster.actor_logs`; Ray keeps its own copy under its session folder) and
    Ray's own INFO lines ("Started a local Ray instance") and its token-auth notice
    (`rlrt_megatron.upstream_warnings`) are not shown."""
    import logging

    import ray

    if ray.is_initialized():
        return
    if quiet:
        from rlrt_megatron.upstream_warnings import silence_ray_auth_notice

        silence_ray_auth_notice()
    config = config or RayConfig()
    kwargs = dict(
        include_dashboard=config.include_dashboard,
        log_to_driver=not quiet,
        logging_level=logging.WARNING if quiet else logging.INFO,
    )
    if config.include_dashboard:
        kwargs["dashboard_host"] = "127.0.0.1"
    if config.address is None:
        ray.init(num_cpus=config.num_cpus, **kwargs)
    else:
        ray.init(address=config.address, **kwargs)
