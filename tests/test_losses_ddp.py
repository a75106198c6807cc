"""Two gloo processes under DistributedDataParallel give the loss and the gradients of one process.

Each rank runs a tiny two-tower model on its half of a batch; the loss it returns and every parameter
gradient after DDP's averaging must equal those of a single process on the whole batch. A gather
without gradient is shown to get the gradients wrong, which is why clipmini.losses has an autograd gather.
"""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from clipmini.losses import all_gather_no_grad, clip_loss, siglip_loss

WORLD = 2
N = 12  # global batch; 6 pairs per rank
CASES = ("clip", "clip_chunked", "clip_caption_ids", "clip_image_only", "siglip", "gather_without_grad")


class TinyTwoTower(nn.Module):
    """Two linear towers and the learned scalars; forward returns what the losses take."""

    def __init__(self, siglip: bool = False):
        super().__init__()
        self.image_proj = nn.Linear(10, 8)
        self.text_proj = nn.Linear(6, 8)
        self.logit_scale = nn.Parameter(torch.tensor(2.3))  # ln s
        self.logit_bias = nn.Parameter(torch.tensor(-4.0)) if siglip else None

    def forward(self, x_image, x_text):
        image_features = F.normalize(self.image_proj(x_image), dim=1)  # [n, 8]
        text_features = F.normalize(self.text_proj(x_text), dim=1)  # [n, 8]
        return image_features, text_features, self.logit_scale.exp(), self.logit_bias


def _data():
    g = torch.Generator().manual_seed(0)
    x_image, x_text = torch.randn(N, 10, generator=g), torch.randn(N, 6, generator=g)
    # duplicate captions across the two ranks' halves and within one half
    caption_ids = torch.tensor([0, 1, 2, 0, 3, 4, 5, 1, 6, 7, 3, 8])
    torch.manual_seed(1)
    states = {False: TinyTwoTower(False).state_dict(), True: TinyTwoTower(True).state_dict()}
    return x_image, x_text, caption_ids, states


def _gather_without_grad_loss(image_features, text_features, scale, rank, n):
    """open_clip's local loss with a no-grad gather: the local slice is live, the other ranks' are constants."""
    all_image = all_gather_no_grad(image_features)
    all_text = all_gather_no_grad(text_features)
    all_image = torch.cat([all_image[: rank * n], image_features, all_image[(rank + 1) * n :]])
    all_text = torch.cat([all_text[: rank * n], text_features, all_text[(rank + 1) * n :]])
    labels = torch.arange(n) + rank * n
    return (F.cross_entropy(scale * image_features @ all_text.T, labels) + F.cross_entropy(scale * text_features @ all_image.T, labels)) / 2


def _loss(case, image_features, text_features, scale, bias, caption_ids, rank=0, n=N):
    if case == "clip":
        return clip_loss(image_features, text_features, scale)
    if case == "clip_chunked":
        return clip_loss(image_features, text_features, scale, chunk_size=4)
    if case == "clip_caption_ids":
        return clip_loss(image_features, text_features, scale, caption_ids=caption_ids)
    if case == "clip_image_only":
        return clip_loss(image_features, text_features, scale, direction="image")
    if case == "siglip":
        return siglip_loss(image_features, text_features, scale, bias)
    if case == "gather_without_grad":
        if dist.is_initialized():
            return _gather_without_grad_loss(image_features, text_features, scale, rank, n)
        return clip_loss(image_features, text_features, scale)  # what it should have matched
    raise AssertionError(case)


def _run_case(case, model, x_image, x_text, caption_ids, rank=0, n=N):
    image_features, text_features, scale, bias = model(x_image, x_text)
    loss = _loss(case, image_features, text_features, scale, bias, caption_ids, rank, n)
    loss.backward()
    return loss.detach().clone(), {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo")  # env:// reads the variables above, as under torchrun
    try:
        x_image, x_text, caption_ids, states = _data()
        n = N // WORLD
        mine = slice(rank * n, (rank + 1) * n)
        results = {}
        for case in CASES:
            model = TinyTwoTower(case == "siglip")
            model.load_state_dict(states[case == "siglip"])
            ddp = DistributedDataParallel(model)  # averages the gradients over ranks during backward
            loss, _ = _run_case(case, ddp, x_image[mine], x_text[mine], caption_ids[mine], rank, n)
            results[case] = (loss, {name: p.grad.clone() for name, p in model.named_parameters()})
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def test_two_ranks_equal_one_process(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    x_image, x_text, caption_ids, states = _data()
    for case in CASES:
        model = TinyTwoTower(case == "siglip")
        model.load_state_dict(states[case == "siglip"])
        ref_loss, ref_grads = _run_case(case, model, x_image, x_text, caption_ids)
        for rank, results in enumerate(ranks):
            loss, grads = results[case]
            if case == "gather_without_grad":
                # without the autograd gather, gradients from the other rank's rows are lost
                worst = max(_rel(grads[k], ref_grads[k]) for k in ("image_proj.weight", "text_proj.weight"))
                assert worst > 1e-2, f"rank {rank}: a no-grad gather unexpectedly matched ({worst:.2e})"
                continue
            assert _rel(loss, ref_loss) <= 1e-5, f"{case} rank {rank}: loss {loss.item()} != {ref_loss.item()}"
            for name, ref in ref_grads.items():
                assert _rel(grads[name], ref) <= 1e-5, f"{case} rank {rank}: grad of {name} off by {_rel(grads[name], ref):.2e}"
