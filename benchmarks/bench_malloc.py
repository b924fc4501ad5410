"""Memory allocator settings for training steps: page faults and kernel time of glibc's default against a heap that
keeps its pages (no ``mmap`` for large blocks, no trimming), each in its own child process, interleaved.

glibc serves every block above its ``mmap`` threshold (at most 32 MiB) with a fresh ``mmap`` and returns it with
``munmap`` when freed; the activations of a CNN at 224 px are such blocks, so every training step maps, faults in
(zero-filled, one fault per 4 KiB page) and unmaps them again. ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...``
(glibc reads them at start; ``mallopt`` sets the same at run time) keeps the freed memory in the heap for the next
step; ``covidscreen.runtime.keep_freed_memory`` does it by ``mallopt`` when training starts. The child prints
seconds per step, minor page faults, user and system CPU seconds per step and peak memory.

Run::

    PYTHONPATH=src .venv/bin/python benchmarks/bench_malloc.py [--image-size 224] [--steps 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = """
import json, os, resource, sys, time, torch
if os.environ.get("BENCH_MALLOPT"):
    from covidscreen.runtime import keep_freed_memory
    assert keep_freed_memory()
from covidscreen.models import create_model
from covidscreen.training.finetune import discriminative_param_groups, set_trainable_stages
size, steps = int(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
model = create_model("efficientnet_lite0", pretrained=False, num_classes=3)
set_trainable_stages(model, 5)
model = model.to(memory_format=torch.channels_last).train()
opt = torch.optim.AdamW(discriminative_param_groups(model, 1e-3, 1.0), lr=1e-3)
x = torch.rand(32, 1, size, size).contiguous(memory_format=torch.channels_last)
def step():
    loss = model(x).logsumexp(1).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
step()  # warm-up
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
times = []
for _ in range(steps):
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"median_s": sorted(times)[len(times) // 2], "faults": (r1.ru_minflt - r0.ru_minflt) / steps,
                  "user_s": (r1.ru_utime - r0.ru_utime) / steps, "sys_s": (r1.ru_stime - r0.ru_stime) / steps,
                  "max_rss_gb": r1.ru_maxrss / 2**20}))
"""

SETTINGS = {
    "glibc default": {},
    "keep pages (MALLOC_MMAP_MAX_=0, MALLOC_TRIM_THRESHOLD_=4 GiB)": {"MALLOC_MMAP_MAX_": "0",
                                                                      "MALLOC_TRIM_THRESHOLD_": str(4 << 30)},
    "keep pages by mallopt at run time (covidscreen's training)": {"BENCH_MALLOPT": "1"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    results: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    print(f"{os.cpu_count()} CPUs | load {os.getloadavg()[0]:.1f} | batch 32 at {args.image_size}px", flush=True)
    for r in range(args.rounds):
        names = list(SETTINGS) if r % 2 == 0 else list(reversed(SETTINGS))
        for name in names:
            env = {**os.environ, **SETTINGS[name]}
            out = subprocess.run([sys.executable, "-c", CHILD, str(args.image_size), str(args.steps)], env=env,
                                 capture_output=True, text=True, timeout=1800)
            if out.returncode:
                raise SystemExit(out.stderr[-2000:])
            results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  round {r + 1} {name}: {results[name][-1]} | load {os.getloadavg()[0]:.1f}", flush=True)
    base = min(x["median_s"] for x in results["glibc default"])
    print("\n| allocator | s/step (best round) | speed vs default | minor faults/step | user s/step | sys s/step "
          "| peak RSS GB |\n|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        best = min(rows, key=lambda x: x["median_s"])
        print(f"| {name} | {best['median_s']:.2f} | {base / best['median_s']:.2f}x | {best['faults']:.0f} | "
              f"{best['user_s']:.2f} | {best['sys_s']:.2f} | {best['max_rss_gb']:.2f} |")


if __name__ == "__main__":
    main()
