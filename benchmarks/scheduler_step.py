"""CPU cost of one scheduler step (schedule() + finish_step()) with 256 running decode requests, against the 1 ms
target. No model runs; the sampled token is appended outside the timed region, as the engine does.

    .venv/bin/python benchmarks/scheduler_step.py [--requests 256] [--steps 1000] [--no-prefix-caching]
"""

from __future__ import annotations

import argparse
import random
import time

from unifer.config import SchedulerConfig
from unifer.kv.manager import KVCacheManager
from unifer.sched.request import Request
from unifer.sched.scheduler import Scheduler

TARGET_US = 1000.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--no-prefix-caching", action="store_true")
    args = ap.parse_args()

    rng = random.Random(0)
    max_len = 500 + args.steps + 16
    num_blocks = args.requests * (-(-max_len // args.block_size)) + 1  # plenty: no preemption
    kv = KVCacheManager(num_blocks, args.block_size, not args.no_prefix_caching)
    config = SchedulerConfig(max_num_batched_tokens=8192, max_num_seqs=args.requests)
    sched = Scheduler(config, kv, max_model_len=max_len)
    for i in range(args.requests):
        sched.add_request(Request(f"r{i}", [rng.randrange(32000) for _ in range(rng.randint(100, 500))]))

    def step() -> tuple[float, float, list[Request]]:
        t0, c0 = time.perf_counter(), time.process_time()
        out = sched.schedule()
        sched.finish_step(out)
        t1, c1 = time.perf_counter(), time.process_time()
        return t1 - t0, c1 - c0, [s.request for s in out.scheduled if s.samples]

    # prefill everything until every request is decoding (one token per step)
    while True:
        _, _, sampled = step()
        for r in sampled:
            r.append_token(rng.randrange(32000))
        if sched.num_running == args.requests and all(r.num_tokens - r.num_computed_tokens == 1
                                                      for r in sched.running):
            break

    wall = cpu = 0.0
    for _ in range(args.steps):
        w, c, sampled = step()
        if len(sampled) != args.requests:
            raise RuntimeError(f"expected {args.requests} decodes per step, got {len(sampled)}")
        wall, cpu = wall + w, cpu + c
        for r in sampled:
            r.append_token(rng.randrange(32000))

    mean_us = wall / args.steps * 1e6
    cpu_us = cpu / args.steps * 1e6
    print(f"scheduler step, {args.requests} running decodes, block_size {args.block_size}, "
          f"prefix caching {'off' if args.no_prefix_caching else 'on'}, {args.steps} steps")
    print(f"  mean wall {mean_us:.1f} us/step, mean CPU {cpu_us:.1f} us/step")
    print(f"  ratio to the {TARGET_US:.0f} us target: {mean_us / TARGET_US:.3f} (< 1 meets it)")


if __name__ == "__main__":
    main()
