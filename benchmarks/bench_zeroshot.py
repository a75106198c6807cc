"""Zero-shot evaluation throughput: cached class prototypes against rebuilding them for every batch.

The dual-tower design lets the C class prototypes be encoded once; evaluation is then one image-tower pass
and one [B, E] @ [E, C] matmul per batch. This measures images/s of that path (`PrototypeCache`) against
the naive path that re-encodes every prompt of every class for each batch, and reports the ratio (both
measured in the same run). Results merge into a JSON file keyed by model and device.

    python benchmarks/bench_zeroshot.py                       # tiny-vit, CIFAR-10 names x 18 templates
    python benchmarks/bench_zeroshot.py --model small-vit --images 1024 --device cuda
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import statistics
import time
from pathlib import Path

import torch

from clipmini.fileio import atomic_write_json
from clipmini.model import create_model
from clipmini.prompts import CIFAR10_CLASSNAMES
from clipmini.tokenizer import tokenize
from clipmini.zeroshot import (
    CIFAR_TEMPLATES,
    IMAGENET_TEMPLATES,
    IMAGENET_TEMPLATES_7,
    PrototypeCache,
    build_classifier,
    predict,
)

TEMPLATE_SETS = {"cifar": CIFAR_TEMPLATES, "imagenet": IMAGENET_TEMPLATES, "imagenet7": IMAGENET_TEMPLATES_7}
OPENAI_EOT = 49407


def make_tokenizer(vocab_size: int):
    """OpenAI's tokenizer; for a model with a smaller vocabulary the ids are folded into it (EOT kept the
    largest id). The ids' values do not change the cost being measured, only their count does."""
    if vocab_size >= OPENAI_EOT + 1:
        return tokenize

    def folded(texts, context_length=77):
        tokens = tokenize(texts, context_length=context_length, truncate=True)
        return torch.where(tokens == OPENAI_EOT, vocab_size - 1, tokens % (vocab_size - 1))

    return folded


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_cached(model, tokenizer, images, classnames, templates, batch_size, device) -> float:
    """Seconds to classify every image with prototypes built once (the build is inside the timing)."""
    sync(device)
    start = time.perf_counter()
    cache = PrototypeCache(model, tokenizer, device=device)
    with torch.no_grad():
        for i in range(0, images.shape[0], batch_size):
            W = cache(classnames, templates)  # [E, C], encoded on the first batch only
            predict(model.encode_image(images[i:i + batch_size]), W).argmax(dim=1)
    sync(device)
    assert cache.builds == 1
    return time.perf_counter() - start


def run_rebuild(model, tokenizer, images, classnames, templates, batch_size, device) -> float:
    """Seconds to classify every image, re-encoding all C x T prompts for every batch."""
    sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, images.shape[0], batch_size):
            W = build_classifier(model, tokenizer, classnames, templates, device=device)
            predict(model.encode_image(images[i:i + batch_size]), W).argmax(dim=1)
    sync(device)
    return time.perf_counter() - start


def summarize(values: list[float]) -> dict:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "spread": (max(values) - min(values)) / statistics.median(values),
        "runs": values,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-vit", help="a name in clipmini.config.MODEL_CONFIGS")
    parser.add_argument("--templates", default="cifar", choices=sorted(TEMPLATE_SETS))
    parser.add_argument("--images", type=int, default=256, help="images classified per repetition")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON file (default benchmarks/results/<hostname>.json)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    model = create_model(args.model).to(device).eval()
    config = model.config
    tokenizer = make_tokenizer(config.text.vocab_size)
    templates = TEMPLATE_SETS[args.templates]
    classnames = list(CIFAR10_CLASSNAMES)
    R = config.vision.image_size
    images = torch.randn(args.images, 3, R, R, generator=torch.Generator().manual_seed(args.seed)).to(device)

    # Warm up both paths (allocator, kernels, the tokenizer's caches) before timing.
    run_cached(model, tokenizer, images[: args.batch_size], classnames, templates, args.batch_size, device)
    run_rebuild(model, tokenizer, images[: args.batch_size], classnames, templates, args.batch_size, device)

    cached, rebuild, ratios = [], [], []
    for _ in range(args.reps):  # interleaved, so drift in machine load hits both paths alike
        t_cached = run_cached(model, tokenizer, images, classnames, templates, args.batch_size, device)
        t_rebuild = run_rebuild(model, tokenizer, images, classnames, templates, args.batch_size, device)
        cached.append(args.images / t_cached)
        rebuild.append(args.images / t_rebuild)
        ratios.append(t_rebuild / t_cached)

    record = {
        "model": args.model,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": args.threads,
        "images": args.images,
        "batch_size": args.batch_size,
        "classes": len(classnames),
        "templates": len(templates),
        "reps": args.reps,
        "cached_images_per_s": summarize(cached),
        "rebuild_images_per_s": summarize(rebuild),
        "speedup_cached_over_rebuild": summarize(ratios),
        "torch": torch.__version__,
        "command": "python benchmarks/bench_zeroshot.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out" and v is not None
        ),
    }
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"{socket.gethostname()}.json"
    data = json.loads(out.read_text()) if out.exists() else {}
    data.setdefault("bench_zeroshot", {})[f"{args.model}/{args.templates}/{device.type}"] = record
    atomic_write_json(out, data)
    print(
        f"{args.model} on {device}: cached {record['cached_images_per_s']['median']:.1f} img/s, "
        f"rebuild {record['rebuild_images_per_s']['median']:.1f} img/s, "
        f"speedup x{record['speedup_cached_over_rebuild']['median']:.1f} "
        f"(spread {100 * record['speedup_cached_over_rebuild']['spread']:.0f}%) -> {out}"
    )


if __name__ == "__main__":
    main()
