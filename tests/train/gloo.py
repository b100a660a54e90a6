"""Runs a function in N CPU processes wired like torchrun (gloo, loopback), for data-parallel tests."""
from __future__ import annotations

import os
import socket
from typing import Any, Callable

import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    from recpipe.train.distributed import cleanup

    try:
        fn(rank, *args)
    finally:
        cleanup()


def spawn(fn: Callable[..., None], world: int, *args: Any) -> None:
    """Calls ``fn(rank, *args)`` in ``world`` spawned processes with torchrun's environment; raises on failure.

    ``fn`` must be importable (module level) and initialise the process group itself (``init_from_env``).
    """
    mp.start_processes(_entry, args=(world, _free_port(), fn, args), nprocs=world, start_method="spawn", join=True)
