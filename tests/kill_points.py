"""Kill points for the crash tests: a training process stops at a chosen point, says so, and waits there.

The test then SIGKILLs it exactly at that point, on any machine, fast or slow: no sleeps, no deadlines.
Install a point in the process to be killed (a forked child, or a wrapper around the command line)
before it trains; nothing in clipmini changes.

- "step:K": optimizer step K (0-based, the global step, restored on resume) has its gradients and is
  about to update the weights: a kill mid-step.
- "write:K:FILE": checkpoint ckpt-K is being written and FILE's temporary file is complete but not yet
  renamed into `.ckpt-K.partial/`: a kill mid-write (FILE = MANIFEST.json: all written, not yet renamed).
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Callable


def stop_at(point: str, report: Callable[[], None]) -> None:
    """Make this process call `report()` at `point`, then wait there until it is killed."""
    kind, step, *name = point.split(":")

    def stop() -> None:
        report()
        threading.Event().wait()  # until the SIGKILL

    if kind == "step":
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        def before_step(optimizer, args, kwargs):
            state = optimizer.state.get(optimizer.param_groups[0]["params"][0], {})
            if int(state.get("step", 0)) == int(step):
                stop()

        register_optimizer_step_pre_hook(before_step)
    elif kind == "write":
        import clipmini.fileio as fileio
        from clipmini.checkpoint import checkpoint_name

        real_open = fileio.atomic_open
        folder = f".{checkpoint_name(int(step))}.partial"

        @contextlib.contextmanager
        def atomic_open(path, mode="wb"):
            with real_open(path, mode) as handle:
                yield handle
                if Path(path).name == name[0] and Path(path).parent.name == folder:
                    handle.flush()
                    stop()

        fileio.atomic_open = atomic_open  # atomic_write_bytes/_text/_json look it up here
    else:
        raise ValueError(f"unknown kill point {point!r}; use 'step:K' or 'write:K:FILE'")
