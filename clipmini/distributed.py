"""Scaling out: one process per device under `torchrun`, the same global batch, the same gradients.

`torchrun` starts W copies of a program and tells each one who it is through environment variables
(`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`). This module holds what a training
run does with them, and the tools the book uses to check and cost it:

* `init_distributed` / `process_group`: join that group (`env://`): gloo on the CPU, NCCL on CUDA;
  leave it cleanly (a barrier after a clean run, `destroy_process_group` always);
* `wrap_ddp`: DistributedDataParallel, which averages the parameters' gradients over the ranks;
* `batch_plan`: the batch arithmetic, global batch = micro-batch x accumulation steps x world size;
* `gather_cost`: what the loss's feature all-gather moves per step, against the logits each rank holds;
* `count_collectives`, `record_matmuls`: measure those two on a real run;
* `launch`: W local processes with torchrun's variables (tests and chapters), and the workers
  `train_worker` and `gather_worker` they run.

The loss itself (`clipmini.losses.clip_loss`) gathers the features with gradient, so that W ranks with
n pairs each compute the loss of one batch of N = W·n pairs; the data are split by rank by the caption
world (`CaptionWorld.batch(..., rank, world_size)`) and the real loaders (`clipmini.data.real`).

    torchrun --standalone --nproc_per_node=2 -m clipmini.train --config params/train-tiny.yaml --steps 4 --threads 1
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.module import register_module_forward_hook
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.overrides import TorchFunctionMode

__all__ = [
    "DistInfo",
    "init_distributed",
    "resolve_device",
    "shutdown",
    "process_group",
    "wrap_ddp",
    "is_main_process",
    "BatchPlan",
    "batch_plan",
    "GatherCost",
    "gather_cost",
    "Collective",
    "count_collectives",
    "record_matmuls",
    "launch",
    "run_sequence",
    "train_worker",
    "gather_worker",
    "relative_difference",
    "relative_differences",
    "overall_relative_difference",
]


# ==============================================================================================
# Joining and leaving the process group
# ==============================================================================================


@dataclass(frozen=True)
class DistInfo:
    """Who this process is in the job (rank 0 of 1 when it runs alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # the rank on this machine: picks the GPU
    created_group: bool = False  # True if init_distributed created the process group (and must destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} must be an integer (torchrun sets it)") from None


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (env://): gloo on the CPU, NCCL on CUDA.

    Without torchrun (`WORLD_SIZE` unset or 1) this does nothing and returns rank 0 of 1. If a group
    already exists (a caller made it), its rank and size are returned and it is left to that caller.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return DistInfo()
    local_rank = _env_int("LOCAL_RANK", 0)
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, created_group=False)
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise ValueError(
            f"WORLD_SIZE={world_size} but {', '.join(missing)} not set: start the job with torchrun "
            "(e.g. torchrun --standalone --nproc_per_node=2 -m clipmini.train ...), which sets them all"
        )
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and _env_int("TORCHELASTIC_MAX_RESTARTS", 0) > 0:
        warnings.warn(
            "torchrun --max-restarts with the agent's shared TCPStore: a restarted group can read the previous "
            "attempt's addresses from it and fail to connect (pytorch/pytorch#135712). Start torchrun with "
            "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 so that every attempt gets a fresh store",
            RuntimeWarning,
            stacklevel=2,
        )
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)  # before NCCL: each process talks through its own GPU
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method="env://")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, created_group=True)


def resolve_device(device: str, info: DistInfo) -> torch.device:
    """`device` made concrete: "auto" or "cuda" under torchrun becomes this process's GPU, cuda:LOCAL_RANK."""
    from .seeding import pick_device

    resolved = pick_device(device)
    if resolved.type == "cuda" and resolved.index is None and info.world_size > 1:
        resolved = torch.device("cuda", info.local_rank)
    return resolved


def shutdown(info: DistInfo, *, barrier: bool = True) -> None:
    """Leave the group `init_distributed` created: a barrier (no rank exits while another still needs
    it), then `destroy_process_group`. After an error pass `barrier=False`: the other ranks may never
    reach the barrier, and torchrun stops (or restarts) them once this process exits."""
    if not (info.created_group and dist.is_available() and dist.is_initialized()):
        return
    try:
        if barrier:
            if dist.get_backend() == "nccl":
                dist.barrier(device_ids=[info.local_rank])
            else:
                dist.barrier()
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device: str = "auto") -> Iterator[DistInfo]:
    """`with process_group(device) as info:` joins torchrun's group and always leaves it (see `shutdown`)."""
    info = init_distributed(device)
    clean = False
    try:
        yield info
        clean = True
    finally:
        shutdown(info, barrier=clean)


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """`module` in DistributedDataParallel when there is more than one rank, else `module` itself.

    DDP broadcasts rank 0's parameters once, then all-reduces (averages) the gradients during backward.
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return module
    device_ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def is_main_process() -> bool:
    """True on rank 0 (or without a group): the process that logs and writes checkpoints."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return _env_int("RANK", 0) == 0


# ==============================================================================================
# The batch arithmetic
# ==============================================================================================


@dataclass(frozen=True)
class BatchPlan:
    """How one optimizer step's global batch is cut: over ranks, then into accumulation micro-batches."""

    world_size: int
    global_batch: int  # pairs the loss compares per step, all ranks together (TrainConfig.batch_size)
    local_batch: int  # pairs of one rank per step
    micro_batch: int  # pairs of one rank per forward/backward pass with gradient
    accumulation_steps: int  # passes with gradient per rank per step (1 = no accumulation)

    @property
    def effective_batch(self) -> int:
        """micro-batch x accumulation steps x world size: the batch whose gradient one step takes."""
        return self.micro_batch * self.accumulation_steps * self.world_size

    @property
    def negatives(self) -> int:
        """Negatives each image (and each caption) is contrasted with: the global batch minus its pair."""
        return self.global_batch - 1


def batch_plan(config: Any, world_size: int) -> BatchPlan:
    """The `BatchPlan` of a `TrainConfig` on `world_size` ranks (its sizes checked by `check_world_size`)."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
    config.check_world_size(world_size)
    local = config.batch_size // world_size
    micro = config.micro_batch // world_size if config.micro_batch is not None else local
    return BatchPlan(world_size, config.batch_size, local, micro, local // micro)


# ==============================================================================================
# The cost model: the features' all-gather against the logits
# ==============================================================================================


@dataclass(frozen=True)
class GatherCost:
    """Per rank and per step, for a contrastive loss over a global batch split across ranks.

    Bytes are tensor sizes. `wire_bytes` is what a rank sends with ring algorithms (all-gather:
    (W-1)/W of the result; all-reduce: 2(W-1)/W of the tensor); real libraries come close to it.
    """

    batch: int  # N, the global batch
    world_size: int  # W
    embed_dim: int  # E
    bytes_per_elem: int  # 4 for fp32 features, 2 for fp16/bf16
    loss: str  # "clip" gathers both towers; "siglip" the text features only
    local_batch: int  # n = N / W
    forward_gather_bytes: int  # received in the forward all-gathers: towers x (W-1) x n x E x b
    backward_reduce_bytes: int  # all-reduced in backward (the gathered features' gradient): towers x N x E x b
    wire_bytes: int  # sent by this rank, forward and backward, with ring algorithms
    logits_bytes: int  # the logits this rank holds: N x N x b alone; directions x n x N x b when distributed

    @property
    def single_process_logits_bytes(self) -> int:
        """The logits of the whole batch in one process: N x N x b (one matrix serves both directions)."""
        return self.batch * self.batch * self.bytes_per_elem


def gather_cost(batch: int, world_size: int, embed_dim: int, bytes_per_elem: int = 4, loss: str = "clip") -> GatherCost:
    """What the loss's feature all-gather costs each rank per step, and the logits memory it holds.

    InfoNCE (`loss="clip"`) gathers the image and the text features ([n, E] each, with gradient) and
    each rank computes its n rows against all N columns in both directions: two [n, N] logits. SigLIP
    gathers the texts only and holds one [n, N]. Alone (W = 1) there is nothing to move and one [N, N].
    """
    for name, value in (("batch", batch), ("world_size", world_size), ("embed_dim", embed_dim), ("bytes_per_elem", bytes_per_elem)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if batch % world_size:
        raise ValueError(f"batch ({batch}) must be a multiple of world_size ({world_size}): every rank holds batch / world_size pairs")
    if loss not in ("clip", "siglip"):
        raise ValueError(f"loss must be 'clip' or 'siglip', got {loss!r}")
    towers = directions = 2 if loss == "clip" else 1
    N, W, E, b = batch, world_size, embed_dim, bytes_per_elem
    n = N // W
    if W == 1:
        return GatherCost(N, W, E, b, loss, n, 0, 0, 0, N * N * b)
    forward = towers * (W - 1) * n * E * b
    backward = towers * N * E * b
    wire = forward + towers * 2 * (W - 1) * n * E * b  # ring all-reduce sends 2(W-1)/W of the [N, E] tensor
    return GatherCost(N, W, E, b, loss, n, forward, backward, wire, directions * n * N * b)


# ==============================================================================================
# Measuring: the collectives a loss calls, the matrix products it makes
# ==============================================================================================


@dataclass(frozen=True)
class Collective:
    """One call of `torch.distributed.all_gather` / `all_reduce` as this rank made it."""

    op: str  # "all_gather" or "all_reduce"
    shape: tuple  # this rank's tensor: the input of all_gather, the reduced tensor of all_reduce
    dtype: str
    nbytes: int  # bytes of that tensor
    world_size: int

    @property
    def received_bytes(self) -> int:
        """all_gather: the other ranks' slices that arrive; all_reduce: the tensor's size (its payload)."""
        return (self.world_size - 1) * self.nbytes if self.op == "all_gather" else self.nbytes


@contextlib.contextmanager
def count_collectives() -> Iterator[list[Collective]]:
    """Record every `torch.distributed.all_gather` and `all_reduce` called through the module (as
    `clipmini.losses` calls them) inside the block. DDP's own gradient all-reduce runs in C++ and is
    not seen: this measures the loss's traffic only. It swaps module attributes: one block at a time."""
    log: list[Collective] = []
    real_gather, real_reduce = dist.all_gather, dist.all_reduce

    def note(op: str, tensor: torch.Tensor) -> None:
        world = dist.get_world_size() if dist.is_initialized() else 1
        log.append(Collective(op, tuple(tensor.shape), str(tensor.dtype).replace("torch.", ""), tensor.numel() * tensor.element_size(), world))

    def all_gather(tensor_list, tensor, *args, **kwargs):
        note("all_gather", tensor)
        return real_gather(tensor_list, tensor, *args, **kwargs)

    def all_reduce(tensor, *args, **kwargs):
        note("all_reduce", tensor)
        return real_reduce(tensor, *args, **kwargs)

    dist.all_gather, dist.all_reduce = all_gather, all_reduce
    try:
        yield log
    finally:
        dist.all_gather, dist.all_reduce = real_gather, real_reduce


_MATMULS = {torch.matmul, torch.mm, torch.Tensor.matmul, torch.Tensor.mm, torch.Tensor.__matmul__, torch.Tensor.__rmatmul__}


class _MatmulRecorder(TorchFunctionMode):
    def __init__(self, log: list[tuple[int, ...]]):
        super().__init__()
        self.log = log

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in _MATMULS and isinstance(out, torch.Tensor):
            self.log.append(tuple(out.shape))
        return out


@contextlib.contextmanager
def record_matmuls() -> Iterator[list[tuple[int, ...]]]:
    """The shapes of the matrix products made in the block (in a contrastive loss: its logits)."""
    log: list[tuple[int, ...]] = []
    with _MatmulRecorder(log):
        yield log


# ==============================================================================================
# Launching local processes as torchrun would
# ==============================================================================================


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launched(rank: int, fn: Callable, args: tuple, world_size: int, port: int, folder: str, threads: int) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size), GROUP_RANK="0", OMP_NUM_THREADS=str(threads),
    )
    torch.set_num_threads(threads)
    result = fn(*args)
    target = Path(folder) / f"rank{rank}.pt"
    partial = target.with_suffix(".partial")
    with open(partial, "wb") as f:
        torch.save(result, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, target)


def launch(fn: Callable[..., Any], world_size: int = 2, args: tuple = (), *, threads: int = 1, timeout: float = 600.0) -> list[Any]:
    """Run `fn(*args)` in `world_size` fresh local processes with torchrun's environment variables set
    (env://, so `init_distributed` joins them into one gloo group); return each rank's result, in order.

    `fn` must be importable (a module-level function of a package: the processes are spawned, not
    forked). Each process uses `threads` torch threads. An error in any rank is raised here.
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
    if getattr(fn, "__module__", "__main__") == "__main__" or "<locals>" in getattr(fn, "__qualname__", ""):
        raise ValueError(
            f"launch needs a function the spawned processes can import; {getattr(fn, '__qualname__', fn)!r} is defined "
            "in __main__ or inside a function. Put it in a module (e.g. clipmini.distributed.train_worker)"
        )
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="clipmini-launch-") as folder:
        context = mp.start_processes(
            _launched, args=(fn, tuple(args), world_size, _free_port(), folder, threads),
            nprocs=world_size, join=False, start_method="spawn",
        )
        deadline = time.monotonic() + timeout
        while not context.join(timeout=0.5):  # raises ProcessRaisedException / ProcessExitedException
            if time.monotonic() > deadline:
                for process in context.processes:
                    if process.is_alive():
                        process.kill()
                raise TimeoutError(f"launch: {world_size} process(es) of {fn.__qualname__} still running after {timeout:.0f} s")
        return [torch.load(Path(folder) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]  # our own files


# ==============================================================================================
# Workers (run on every rank by `launch`, or by torchrun)
# ==============================================================================================


def run_sequence(calls: list[tuple[Callable[..., Any], tuple]], device: str = "auto") -> list[Any]:
    """Run several workers one after the other in one process group: one launch, one start-up."""
    with process_group(device):
        return [fn(*args) for fn, args in calls]


def _status_mib(key: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _reset_peak_memory() -> float | None:
    """Reset this process's peak RSS (Linux: /proc/self/clear_refs); return the current RSS in MiB."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    return _status_mib("VmRSS:")


def _peak_memory() -> float | None:
    """Peak RSS in MiB since the last reset (or since the start)."""
    peak = _status_mib("VmHWM:")
    if peak is None:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return peak


def train_worker(configs: list[dict], record_gradients: bool = True) -> list[dict]:
    """Train each config with `clipmini.train.train` on this rank and return what the checks compare.

    For each config: the JSONL history, the final metrics, the final weights, the gradients each
    optimizer step applied (clipped, as the optimizer saw them; keyed by parameter name), the batch
    size of every forward pass with gradient (accumulation shows as several per step), the wall time
    and the peak memory (RSS, MiB) of the run. The process group (if any) spans all the configs.
    """
    from .train import ContrastiveModel, TrainConfig, train

    configs = [TrainConfig.from_dict(c) if isinstance(c, dict) else c for c in configs]
    results = []
    with process_group(configs[0].device) as info:
        for config in configs:
            gradients: list[list[torch.Tensor | None]] = []
            order: list[int] = []
            passes: list[int] = []

            def before_step(optimizer, args, kwargs):
                params = [p for group in optimizer.param_groups for p in group["params"]]
                if not order:
                    order.extend(id(p) for p in params)
                if record_gradients:
                    gradients.append([p.grad.detach().clone() if p.grad is not None else None for p in params])

            def after_forward(module, inputs, output):
                if isinstance(module, ContrastiveModel) and torch.is_grad_enabled():
                    passes.append(int(inputs[0].shape[0]))

            step_hook = register_optimizer_step_pre_hook(before_step)
            forward_hook = register_module_forward_hook(after_forward)
            baseline = _reset_peak_memory()
            start = time.perf_counter()
            try:
                result = train(config)
            finally:
                step_hook.remove()
                forward_hook.remove()
            seconds = time.perf_counter() - start
            peak = _peak_memory()
            names = {id(p): f"clip.{n}" for n, p in result.model.named_parameters()}
            state = {f"clip.{k}": v.detach().cpu().clone() for k, v in result.model.state_dict().items()}
            if result.siglip_head is not None:
                names.update({id(p): f"siglip_head.{n}" for n, p in result.siglip_head.named_parameters()})
                state.update({f"siglip_head.{k}": v.detach().cpu().clone() for k, v in result.siglip_head.state_dict().items()})
            keys = [names[i] for i in order]
            results.append({
                "rank": info.rank,
                "world_size": info.world_size,
                "config": config.to_dict(),
                "history": result.history,
                "metrics": result.metrics,
                "state_dict": state,
                "gradients": [{k: g.cpu() for k, g in zip(keys, step) if g is not None} for step in gradients],
                "forward_batch_sizes": passes,
                "seconds": seconds,
                "baseline_mib": baseline,
                "peak_mib": peak,
            })
    return results


def gather_worker(config: dict, gathers: tuple[bool, ...] = (True, False)) -> list[dict]:
    """One forward/backward of the symmetric InfoNCE on this rank's share of batch 0, through DDP,
    once per `gather` setting of `clip_loss`; returns the loss, the parameters' gradients (averaged
    over ranks by DDP), the loss's collectives (`count_collectives`) and its logits' shapes
    (`record_matmuls`). At world size 1 this is the single-process reference."""
    from .losses import clip_loss
    from .seeding import seed_everything
    from .train import ContrastiveModel, TrainConfig, make_model, make_tokenizer, make_world

    config = TrainConfig.from_dict(config) if isinstance(config, dict) else config
    if config.data != "world":
        raise ValueError(f"gather_worker draws its batch from the caption world; got data={config.data!r}")
    results = []
    with process_group(config.device) as info:
        config.check_world_size(info.world_size)
        device = resolve_device(config.device, info)
        world = make_world(config)
        tokenizer = make_tokenizer(config, world)
        local = config.batch_size // info.world_size
        images, captions = world.batch(0, local, rank=info.rank, world_size=info.world_size)
        context_length = config.clip_config().text.context_length
        tokens = tokenizer(list(captions), context_length=context_length, truncate=True).to(device)  # [n, L]
        images = torch.as_tensor(images, dtype=torch.float32).to(device)  # [n, 3, R, R]
        for gather in gathers:
            seed_everything(config.seed)
            module = ContrastiveModel(make_model(config).to(device))
            model = wrap_ddp(module, device)
            image_features, text_features, scale, _ = model(images, tokens)  # [n, E] x2
            with count_collectives() as collectives:
                with record_matmuls() as logits:
                    loss = clip_loss(image_features, text_features, scale, gather=gather)
                loss.backward()
            results.append({
                "gather": gather,
                "rank": info.rank,
                "world_size": info.world_size,
                "loss": float(loss.detach()),
                "gradients": {n: p.grad.detach().cpu().clone() for n, p in module.named_parameters() if p.grad is not None},
                "collectives": [dict(asdict(c), received_bytes=c.received_bytes) for c in collectives],
                "logits_shapes": logits,
                "parameters": sum(p.numel() for p in module.parameters()),
            })
    return results


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a - b‖ / ‖b‖ (‖a - b‖ when b is all zeros): how far `a` is from the reference `b`."""
    a, b = a.detach().double(), b.detach().double()
    reference = float(b.norm())
    error = float((a - b).norm())
    return error / reference if reference > 0 else error


def relative_differences(tensors: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict[str, float]:
    """`relative_difference` per tensor name. An attention's packed `in_proj_bias` is reported as three
    entries, `name[q]`, `name[k]` and `name[v]`: the key bias's gradient is zero in exact arithmetic
    (a softmax ignores a constant added to all of a row's logits), so what it holds is rounding noise
    that AdamW turns into steps of its own; it is compared apart from the rest."""
    if tensors.keys() != reference.keys():
        raise ValueError(f"the two sets of tensors have different names: {sorted(tensors.keys() ^ reference.keys())[:5]}")
    out = {}
    for name, ref in reference.items():
        got = tensors[name]
        if name.endswith("in_proj_bias") and ref.dim() == 1 and ref.numel() % 3 == 0:
            width = ref.numel() // 3
            for i, part in enumerate("qkv"):
                piece = slice(i * width, (i + 1) * width)
                out[f"{name}[{part}]"] = relative_difference(got[piece], ref[piece])
        else:
            out[name] = relative_difference(got, ref)
    return out


def overall_relative_difference(tensors: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    """`relative_difference` of all the tensors taken as one vector (a whole model's weights or gradients)."""
    if tensors.keys() != reference.keys():
        raise ValueError(f"the two sets of tensors have different names: {sorted(tensors.keys() ^ reference.keys())[:5]}")
    error = sum(float((tensors[k].detach().double() - ref.detach().double()).norm()) ** 2 for k, ref in reference.items())
    norm = sum(float(ref.detach().double().norm()) ** 2 for ref in reference.values())
    return (error / norm) ** 0.5 if norm > 0 else error**0.5
