"""Throughput of the default model on this machine: training, inference and data loading (with/without cache).

Run: ``.venv/bin/python benchmarks/bench_speed.py [--model efficientnet_lite0] [--image-size 224]``.
Prints figures and ratios from one run; nothing here is a test.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from covidscreen.config import TrainConfig
from covidscreen.data.cache import ImageCache
from covidscreen.data.decode import load_resized
from covidscreen.data.locate import resolve_data_dir
from covidscreen.data.table import load_table
from covidscreen.models import create_model
from covidscreen.runtime import amp_dtype, autocast, resolve_device, to_input
from covidscreen.training.finetune import set_trainable_stages


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=TrainConfig.model)
    ap.add_argument("--image-size", type=int, default=TrainConfig.image_size)
    ap.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    ap.add_argument("--n-images", type=int, default=400, help="images decoded for the loading benchmark")
    ap.add_argument("--steps", type=int, default=8, help="timed training steps")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = resolve_device(args.device)
    amp = amp_dtype(device)
    size, bs = args.image_size, args.batch_size
    print(f"device {device} | torch {torch.__version__} | threads {torch.get_num_threads()} | model {args.model} "
          f"| {size}px | batch {bs}")

    table = load_table(resolve_data_dir(None))
    paths = table.sample(n=min(args.n_images, len(table)), random_state=0)["path"].tolist()
    t = time.perf_counter()
    for p in paths:
        load_resized(p, size)
    decode_rate = rate(len(paths), time.perf_counter() - t)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        cache = ImageCache(paths, size, cache_dir=tmp, progress=False)
        build_rate = rate(len(paths), time.perf_counter() - t)
        rng = np.random.default_rng(0)
        n_read = 0
        t = time.perf_counter()
        for _ in range(50):
            idx = rng.choice(len(paths), bs)
            _ = torch.from_numpy(np.ascontiguousarray(cache.images[idx])).float()
            n_read += bs
        cached_rate = rate(n_read, time.perf_counter() - t)
    print(f"data loading: decode+resize {decode_rate:8.1f} img/s (1 process) | cache build {build_rate:8.1f} img/s "
          f"(worker processes) | cached batches {cached_rate:10.1f} img/s")
    print(f"  -> reading cached batches is {cached_rate / decode_rate:.0f}x faster than decoding")

    model = create_model(args.model, pretrained=False, num_classes=3).to(device).to(memory_format=torch.channels_last)
    stages = set_trainable_stages(model, TrainConfig.train_stages if model.spec.stages else None)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x = to_input(torch.randint(0, 256, (bs, 1, size, size), dtype=torch.uint8), device)
    y = torch.randint(0, 3, (bs,), device=device)
    model.train()
    for step in range(args.steps + 2):
        if step == 2:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
        with autocast(device, amp):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_rate = rate(args.steps * bs, time.perf_counter() - t)
    model.eval()
    xb = to_input(torch.randint(0, 256, (64, 1, size, size), dtype=torch.uint8), device)
    with torch.inference_mode():
        for step in range(5):
            if step == 1:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
            with autocast(device, amp):
                model(xb)
        if device.type == "cuda":
            torch.cuda.synchronize()
    infer_rate = rate(4 * 64, time.perf_counter() - t)
    onnx_rate = float("nan")
    try:
        import warnings

        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cpu_model = model.float().cpu()
            xc = xb.float().cpu()
            torch.onnx.export(cpu_model, (xc,), f"{tmp}/m.onnx", input_names=["image"], output_names=["logits"],
                              dynamic_axes={"image": {0: "batch"}}, opset_version=17, dynamo=False)
            sess = ort.InferenceSession(f"{tmp}/m.onnx", providers=["CPUExecutionProvider"])
            xn = xc.contiguous().numpy()
            sess.run(None, {"image": xn})
            t = time.perf_counter()
            for _ in range(4):
                sess.run(None, {"image": xn})
            onnx_rate = rate(4 * 64, time.perf_counter() - t)
    except ImportError:
        pass
    print(f"training  {train_rate:8.1f} img/s (default fine-tuning depth: {', '.join(stages)})")
    print(f"inference {infer_rate:8.1f} img/s (batch 64, PyTorch {device.type})  -> inference/training ratio "
          f"{infer_rate / train_rate:.1f}x")
    print(f"inference {onnx_rate:8.1f} img/s (batch 64, onnxruntime CPU) -> onnxruntime/PyTorch ratio "
          f"{onnx_rate / infer_rate:.2f}x")
    print(f"one quickstart epoch ({TrainConfig.samples_per_epoch} images) ~ "
          f"{TrainConfig.samples_per_epoch / train_rate:.0f}s of training")


if __name__ == "__main__":
    main()
