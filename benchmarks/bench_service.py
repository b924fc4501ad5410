"""Load benchmark of the second-reader service on loopback: throughput and latency at 1, 4 and 16 concurrent clients
for the PyTorch and ONNX Runtime backends, next to plain ``Predictor`` throughput on the same files, and what happens
past capacity (503s, the server alive, its memory).

Run: ``nice -n 10 .venv/bin/python benchmarks/bench_service.py [--run RUN_DIR] [--requests 48] [--max-seconds 120]``.
Without ``--run`` it builds a run of the default architecture (EfficientNet-Lite0, 224 px, untrained weights: the
same computation as a trained run) with an ONNX export in a temporary folder. The server runs in its own process
(``covidscreen.serving.server.run_server``, JSON request log to a file); the clients are threads of this process, so
on a 2-core machine they take CPU from the server too. Bounded: each level sends at most ``--requests`` requests
and stops after ``--max-seconds``. Prints a Markdown table; nothing here is a test.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pandas as pd

SERVER = """
import sys
from covidscreen.serving import ServeConfig
from covidscreen.serving.server import run_server
run_server(ServeConfig(run_dir=sys.argv[1], port=int(sys.argv[2]), backend=sys.argv[3], db=sys.argv[4],
                       max_queue=int(sys.argv[5]), device="cpu", model_threads=int(sys.argv[6]) or None,
                       batch_wait_ms=float(sys.argv[7])))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_run(root: Path) -> Path:
    import torch

    from covidscreen.inference.checkpoint import save_checkpoint
    from covidscreen.inference.onnx import export_onnx
    from covidscreen.models import create_model

    torch.manual_seed(0)
    run = root / "run"
    model = create_model("efficientnet_lite0", pretrained=False, num_classes=3)
    save_checkpoint(run, model, {"classes": ["covid", "normal", "pneumonia"], "positive_class": "covid",
                                 "image_size": 224, "operating_points": {"default": 0.5}, "threshold": 0.5})
    export_onnx(run)
    return run


def pick_files(n: int) -> list[Path]:
    from covidscreen.data.locate import resolve_data_dir

    data = resolve_data_dir(None)
    data = data if (data / "metadata.csv").is_file() else data / "cxr"
    meta = pd.read_csv(data / "metadata.csv")
    per_site = n // meta["site"].nunique() + 1
    rows = pd.concat([g.head(per_site) for _, g in meta.groupby("site")])
    return [data / p for p in rows["image"].head(n)]


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    def __init__(self, run: Path, backend: str, workdir: Path, max_queue: int = 64, model_threads: int = 0,
                 batch_wait_ms: float = 10.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(workdir / f"server-{backend}-{max_queue}.log", "w")
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, str(run), str(self.port), backend,
                                      str(workdir / f"audit-{backend}-{max_queue}.sqlite"), str(max_queue),
                                      str(model_threads), str(batch_wait_ms)],
                                     stdout=self.log, stderr=self.log, env=env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: see {self.log.name}")
            time.sleep(0.3)
        raise RuntimeError("server not ready after 120 s")

    def alive(self) -> bool:
        try:
            return httpx.get(self.url + "/healthz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> dict:
        """Stop the server; its closing statistics (forward passes, images, mean batch, audit commits)."""
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()
        lines = [ln for ln in Path(self.log.name).read_text().splitlines() if '"event": "stopped"' in ln]
        return json.loads(lines[-1]) if lines else {}


BOUNDARY = "covidscreen-bench-boundary"


def multipart(name: str, data: bytes) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def load(url: str, payloads: list[tuple[str, bytes]], clients: int, requests: int, max_seconds: float
         ) -> dict[str, float]:
    """``clients`` threads send one file per request until ``requests`` are done or time is up."""
    latencies: list[float] = []
    statuses: list[int] = []
    lock = threading.Lock()
    counter = {"next": 0}
    stop_at = time.monotonic() + max_seconds

    host, port = url.removeprefix("http://").split(":")
    bodies = [multipart(name, data) for name, data in payloads]  # built once: the clients should cost little CPU

    def client() -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        while time.monotonic() < stop_at:
            with lock:
                i = counter["next"]
                if i >= requests:
                    break
                counter["next"] += 1
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/predict", body=bodies[i % len(bodies)],
                             headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
                resp = conn.getresponse()
                resp.read()
                status = resp.status
                if resp.getheader("connection", "").lower() == "close":
                    conn.close()
            except (OSError, http.client.HTTPException):
                status = 0
                conn.close()
            dt = time.perf_counter() - t0
            with lock:
                statuses.append(status)
                if status == 200:
                    latencies.append(dt)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = len(latencies)
    q = statistics.quantiles(latencies, n=100, method="inclusive") if ok >= 2 else [float("nan")] * 99
    return {"ok": ok, "sent": len(statuses), "503": statuses.count(503), "other": sum(s not in (200, 503)
                                                                                      for s in statuses),
            "img_s": ok / wall if wall else float("nan"), "p50_ms": 1000 * q[49], "p95_ms": 1000 * q[94],
            "p99_ms": 1000 * q[98]}


def plain_predict(run: Path, backend: str, files: list[Path], rounds: int = 2) -> tuple[float, float]:
    """Best images/s of ``Predictor.predict_files`` over ``rounds``, and its CPU milliseconds per image."""
    from covidscreen.inference.predictor import Predictor

    predictor = Predictor(run, device="cpu", backend=backend)
    predictor.predict_files(files[:8], batch_size=16, progress=False)  # warm-up
    best, cpu = 0.0, float("inf")
    for _ in range(rounds):
        t0, c0 = time.perf_counter(), cpu_s(os.getpid())
        predictor.predict_files(files, batch_size=16, progress=False)
        best = max(best, len(files) / (time.perf_counter() - t0))
        cpu = min(cpu, 1000 * (cpu_s(os.getpid()) - c0) / len(files))
    return best, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", type=Path, help="run folder (default: build an untrained efficientnet_lite0 run)")
    ap.add_argument("--requests", type=int, default=48, help="requests per concurrency level")
    ap.add_argument("--images", type=int, default=48, help="distinct shared X-rays sent")
    ap.add_argument("--levels", default="1,4,16")
    ap.add_argument("--backends", default="torch,onnx")
    ap.add_argument("--max-seconds", type=float, default=120, help="time limit per level")
    ap.add_argument("--model-threads", type=int, default=0, help="the server's model_threads (0: library default)")
    ap.add_argument("--batch-wait-ms", type=float, default=10.0, help="the server's batch_wait_ms")
    ap.add_argument("--overload-clients", type=int, default=48)
    ap.add_argument("--overload-rounds", type=int, default=3, help="rounds of the overload test")
    ap.add_argument("--overload-queue", type=int, default=8, help="max_queue of the overload server")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="covidscreen-bench-service-"))
    run = args.run or build_run(work)
    files = pick_files(args.images)
    payloads = [(f.name, f.read_bytes()) for f in files]
    levels = [int(x) for x in args.levels.split(",")]
    rows, stats = [], {}
    for backend in args.backends.split(","):
        plain, plain_cpu = plain_predict(run, backend, files)
        server = Server(run, backend, work, model_threads=args.model_threads, batch_wait_ms=args.batch_wait_ms)
        try:
            load(server.url, payloads, 1, 4, 30)  # warm the connection path
            for clients in levels:
                c0 = cpu_s(server.proc.pid)
                res = load(server.url, payloads, clients, args.requests, args.max_seconds)
                cpu = 1000 * (cpu_s(server.proc.pid) - c0) / max(res["ok"], 1)
                rows.append({"backend": backend, "clients": clients, **res, "plain_img_s": plain,
                             "ratio": res["img_s"] / plain, "p99/p50": res["p99_ms"] / res["p50_ms"],
                             "server_cpu_ms_img": cpu, "plain_cpu_ms_img": plain_cpu})
                print(json.dumps(rows[-1]), flush=True)
        finally:
            stats[backend] = server.stop()
    print("\n| backend | clients | requests ok | images/s | plain predict images/s | ratio | p50 ms | p95 ms | "
          "p99 ms | p99/p50 | server CPU ms/img | plain CPU ms/img |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['backend']} | {r['clients']} | {r['ok']}/{r['sent']} | {r['img_s']:.1f} | {r['plain_img_s']:.1f} "
              f"| {r['ratio']:.2f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} | {r['p99/p50']:.2f} "
              f"| {r['server_cpu_ms_img']:.0f} | {r['plain_cpu_ms_img']:.0f} |")

    for backend, st in stats.items():
        print(f"{backend} server, all levels: {st.get('images')} images in {st.get('forward_passes')} forward passes "
              f"(mean batch {st.get('mean_batch')}), {st.get('audit_commits')} audit-log commits")

    # past capacity: many clients against a small admission limit, no retries
    backend = args.backends.split(",")[0]
    server = Server(run, backend, work, max_queue=args.overload_queue)
    try:
        before = rss_mb(server.proc.pid)
        rounds = []
        for _ in range(args.overload_rounds):
            res = load(server.url, payloads, args.overload_clients, args.overload_clients * 4, args.max_seconds)
            rounds.append((res, rss_mb(server.proc.pid)))
        alive = server.alive()
        after = rss_mb(server.proc.pid)
    finally:
        server.stop()
    print(f"\npast capacity ({backend}, max_queue {args.overload_queue}, {args.overload_clients} clients, no retry):")
    for i, (res, mem) in enumerate(rounds, 1):
        print(f"  round {i}: {res['ok']} answered 200, {res['503']} answered 503, {res['other']} other/failed; "
              f"server RSS {mem:.0f} MB")
    print(f"  server alive afterwards: {alive}; RSS {before:.0f} MB before, {after:.0f} MB after")
    print(f"\nwork folder (logs, audit databases): {work}")


if __name__ == "__main__":
    main()
