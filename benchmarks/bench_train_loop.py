"""Throughput of the training loop (`clipmini.train.train`) against a bare step on a fixed batch.

The bare step is the least any loop must do: forward both towers, the symmetric loss, backward, an AdamW
step, on one batch made beforehand. The loop adds everything else: drawing and tokenizing each batch
from the caption world, the schedule, clipping, the non-finite check, the clamp, logging. The ratio
loop / bare is the figure that matters (1.0 = the loop costs nothing); both are timed in the same
process, alternating, so that load on the machine affects both alike.

    python benchmarks/bench_train_loop.py                      # tiny-vit and tiny-rn, batch 256
    python benchmarks/bench_train_loop.py --models tiny-vit --steps 10 --threads 2 --out results.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from clipmini.train import ContrastiveModel, TrainConfig, make_model, make_optimizer, make_tokenizer, make_world, train, train_step


def bare_steps_per_s(config: TrainConfig, steps: int) -> float:
    torch.manual_seed(config.seed)
    model = make_model(config)
    model.validate_inputs = False  # the loop turns the per-call input checks off after its first batch
    module = ContrastiveModel(model)
    optimizer = make_optimizer(module, config)
    world = make_world(config)
    tokenizer = make_tokenizer(config, world)
    images, captions = world.batch(0, config.batch_size)
    tokens = tokenizer(captions, context_length=config.clip_config().text.context_length, truncate=True)
    train_step(module, images, tokens, optimizer, config)  # warm-up
    start = time.perf_counter()
    for step in range(steps):
        train_step(module, images, tokens, optimizer, config, step=step)
    return steps / (time.perf_counter() - start)


def loop_steps_per_s(config: TrainConfig, steps: int) -> float:
    """The loop's own figure: steps over the seconds spent in the loop (setup and evaluation excluded)."""
    train(TrainConfig.from_dict({**config.to_dict(), "steps": 1}))  # imports, tokenizer, first-call costs
    return train(TrainConfig.from_dict({**config.to_dict(), "steps": steps})).metrics["steps_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny-vit", "tiny-rn"])
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    for name in args.models:
        config = TrainConfig(
            model=name, batch_size=args.batch_size, steps=args.steps, eval_tasks=[], progress=False,
            out_dir=None, threads=args.threads, warmup_steps=1,
        )
        loop, bare = [], []
        for _ in range(args.reps):  # alternate, so that machine load hits both alike
            bare.append(bare_steps_per_s(config, args.steps))
            loop.append(loop_steps_per_s(config, args.steps))
        row = {
            "model": name,
            "batch_size": args.batch_size,
            "loop_steps_per_s": round(statistics.median(loop), 3),
            "bare_steps_per_s": round(statistics.median(bare), 3),
            "loop_samples_per_s": round(statistics.median(loop) * args.batch_size, 1),
        }
        row["loop_over_bare"] = round(row["loop_steps_per_s"] / row["bare_steps_per_s"], 3)
        rows.append(row)
        print(json.dumps(row))
    if args.out is not None:
        meta = {"torch": torch.__version__, "threads": args.threads, "machine": platform.machine(),
                "processor": platform.processor(), "steps": args.steps, "reps": args.reps}
        args.out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
