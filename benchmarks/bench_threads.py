"""OpenMP thread count and wait policy for training steps: the same training step of the default model in child
processes with ``OMP_WAIT_POLICY`` active or passive and 1 or all intra-op threads, interleaved.

The wait policy is read once, when PyTorch loads its OpenMP runtime, so each setting needs its own process;
covidscreen sets ``OMP_WAIT_POLICY=PASSIVE`` when the package is imported (``src/covidscreen/__init__.py``) unless
the user set it. On a busy shared CPU a spinning waiter holds a core the thread it waits for needs.

Run::

    PYTHONPATH=src .venv/bin/python benchmarks/bench_threads.py [--image-size 128] [--steps 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = """
import json, sys, time, torch
from covidscreen.models import create_model
from covidscreen.training.finetune import discriminative_param_groups, set_trainable_stages
threads, size, steps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
torch.manual_seed(0)
model = create_model("efficientnet_lite0", pretrained=False, num_classes=3)
set_trainable_stages(model, 5)
model = model.to(memory_format=torch.channels_last).train()
opt = torch.optim.AdamW(discriminative_param_groups(model, 1e-3, 1.0), lr=1e-3)
x = torch.rand(32, 1, size, size).contiguous(memory_format=torch.channels_last)
times = []
for _ in range(steps + 1):
    t = time.perf_counter()
    loss = model(x).logsumexp(1).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    times.append(time.perf_counter() - t)
print(json.dumps(sorted(times[1:])[len(times[1:]) // 2]))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    settings = [(policy, threads) for policy in ("ACTIVE", "PASSIVE") for threads in sorted({1, cores})]
    results: dict[tuple[str, int], list[float]] = {s: [] for s in settings}
    print(f"{cores} CPUs | load {os.getloadavg()[0]:.1f} | batch 32 at {args.image_size}px, efficientnet_lite0 with "
          f"its last 5 stages trained", flush=True)
    for r in range(args.rounds):
        for policy, threads in settings if r % 2 == 0 else reversed(settings):
            env = {**os.environ, "OMP_WAIT_POLICY": policy}
            out = subprocess.run([sys.executable, "-c", CHILD, str(threads), str(args.image_size), str(args.steps)],
                                 capture_output=True, text=True, env=env, timeout=1800, check=True)
            results[policy, threads].append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  round {r + 1}/{args.rounds} | load {os.getloadavg()[0]:.1f}", flush=True)
    base = min(results["ACTIVE", cores])
    print("\n| OMP_WAIT_POLICY | threads | median s/step (best round) | speed vs active with all threads |\n"
          "|---|---|---|---|")
    for (policy, threads), secs in results.items():
        print(f"| {policy.lower()} | {threads} | {min(secs):.2f} | {base / min(secs):.2f}x |")


if __name__ == "__main__":
    main()
