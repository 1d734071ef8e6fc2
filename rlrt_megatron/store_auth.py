"""Rendezvous stores that listen on one address and admit only members that hold a secret.

torch's ``TCPStore`` listens on every interface and admits any client: on a shared cluster
network anyone who finds the port can read or write the rendezvous keys, or join a process
group. This project's stores (the trainer ranks' rendezvous, the weight-broadcast groups) use:

* :func:`listen_on` — a socket bound to the given address only, handed to the store
  (``master_listen_fd``) so that torch's own all-interface listener is never opened;
* :func:`prove_membership` — rank 0 publishes a random nonce, every other member answers with
  HMAC-SHA256(secret, name|rank|nonce), and rank 0 lets the group form only if every answer
  checks out; otherwise every member raises (the caller's error class).

What this does not give: confidentiality of the store's key-value traffic, or protection from a
host that can already reach the store and races the members (it can make the join fail, never
pass). Dependency-free apart from torch.distributed (imported lazily): used by ``megatron/`` and
``cluster/`` alike.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import secrets
import socket
import time
from typing import Any

# The secret of a launch's trainer ranks (set by this project's launchers for every rank).
SECRET_ENV = "RLRT_DIST_SECRET"


class StoreAuthError(RuntimeError):
    """A member could not prove it holds the group's secret: the group is not formed."""


def new_secret() -> str:
    return secrets.token_hex(32)


def listen_on(host: str, port: int) -> int:
    """A listening socket bound to ``host:port`` only; its descriptor is handed to the store,
    which owns (and closes) it from then on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(max(128, socket.SOMAXCONN))
    except OSError:
        sock.close()
        raise
    return sock.detach()


def bound_store(
    host: str, port: int, world_size: int, rank: int, timeout: datetime.timedelta
) -> Any:
    """A ``TCPStore`` hosted by rank 0 on ``host:port`` only; the others connect to it."""
    import torch.distributed as dist

    if rank == 0:
        return dist.TCPStore(
            host,
            port,
            world_size,
            is_master=True,
            timeout=timeout,
            master_listen_fd=listen_on(host, port),
            use_libuv=False,  # torch 2.13's libuv server crashes on a listening fd handed over
        )
    return dist.TCPStore(host, port, world_size, timeout=timeout)


def proof(secret: str, name: str, rank: int, nonce: str) -> str:
    message = f"{name}|{rank}|{nonce}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def prove_membership(
    store: Any,
    *,
    name: str,
    secret: str,
    rank: int,
    world_size: int,
    error: type[Exception] = StoreAuthError,
) -> None:
    """Rank 0 checks that every member knows ``secret`` (see the module docstring); raises
    ``error`` on every member when one does not."""
    if rank == 0:
        nonce = secrets.token_hex(16)
        store.set("auth/nonce", nonce)
        refused = [
            member
            for member in range(1, world_size)
            if not hmac.compare_digest(
                store.get(f"auth/{member}").decode(errors="replace"),
                proof(secret, name, member, nonce),
            )
        ]
        store.set("auth/verdict", "refused" if refused else "ok")
        if refused:
            # Rank 0 hosts the store: let every member read the verdict before it goes away.
            deadline = time.monotonic() + 30.0
            while store.add("auth/seen", 0) < world_size - 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            raise error(
                f"{name}: member(s) {refused} did not prove the group's secret; the group was "
                "not formed"
            )
        return
    nonce = store.get("auth/nonce").decode()
    store.set(f"auth/{rank}", proof(secret, name, rank, nonce))
    verdict = store.get("auth/verdict").decode()
    store.add("auth/seen", 1)
    if verdict != "ok":
        raise error(f"{name}: rank 0 refused the join (secret mismatch)")
