"""Load test of inclinet-serve on localhost: throughput, latency percentiles and memory per concurrency level.

Builds a bundle shaped like the demo's (two model4 regression members and the model4
accept/reject member at ``--size`` px, ``--views`` test-time views; untrained weights cost
the same arithmetic as trained ones), starts ``inclinet-serve`` on 127.0.0.1 as its own
process, and for each concurrency level sends ``--requests`` uploads of ``--distinct``
synthetic galaxy JPEGs (``--image-size`` px) to ``POST /api/file`` from that many clients
(asyncio + httpx). Reported per level: requests per second, p50/p95/p99 latency, the
server's RSS before and after and its peak (``VmHWM``), the batches the inference thread
ran; then the time of one ``inclinet-predict`` process per image for comparison. Every
request must succeed; the run stops by itself.

The server's RSS is also read when a level has answered ``--rss-at`` requests (100, 500,
1,000, 2,000), which shows whether memory stays flat over thousands of requests.

Usage: ``nice python bench/bench_serve.py --work /tmp/bench_serve [--requests 1000 --levels 1 8 32]``
(``--requests 2000 2000 500``: a number per level).
Prints a Markdown report and writes ``results.json`` in the work folder.
"""

import argparse
import asyncio
import io
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build_bundle(work, size, views):
    from inclinet import models
    from inclinet.stages import evaluate

    members = []
    for index, (subset, task) in enumerate(((0, "regression"), (1, "regression"), ("binary", "binary"))):
        models.import_keras().utils.set_random_seed(index)
        path = work / f"{'Binary' if subset == 'binary' else f'Uset_{subset:03d}'}_model4.keras"
        models.build_model("model4", input_size=size, task=task).save(path)
        members.append(
            {
                "name": evaluate.naming.member_name("model4", subset),
                "model": "model4",
                "task": task,
                "subset": subset,
                "path": path,
            }
        )
    evaluate.write_bundle(work / "bundle", members, input_size=size, seed=1, views=views)
    return work / "bundle"


def galaxy_jpeg(size, seed):
    rng = np.random.default_rng(seed)
    axis_ratio = rng.uniform(0.2, 0.9)
    yy, xx = np.mgrid[:size, :size]
    profile = np.exp(-(((xx - size / 2) / (0.12 * size)) ** 2 + ((yy - size / 2) / (0.12 * axis_ratio * size)) ** 2))
    base = 20 + 200 * profile + rng.normal(0, 4, profile.shape)
    array = np.clip(np.stack([base, base * 0.9, base * 0.7], axis=-1), 0, 255).astype(np.uint8)
    stream = io.BytesIO()
    Image.fromarray(array).save(stream, format="JPEG", quality=90)
    return stream.getvalue()


def memory_kb(pid):
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


async def load(url, images, n_requests, concurrency, *, pid=None, checkpoints=()):
    """Send ``n_requests`` uploads from ``concurrency`` clients; with ``pid``, the server's RSS (MB)
    when the number of answered requests reaches each of ``checkpoints``."""
    import httpx

    latencies = []
    failures = []
    rss_at = {}
    counter = iter(range(n_requests))

    async def client_loop(client):
        for index in counter:
            body = images[index % len(images)]
            start = time.perf_counter()
            response = await client.post(
                f"{url}/api/file", files={"file": (f"g{index % len(images)}.jpg", body, "image/jpeg")}
            )
            latencies.append(time.perf_counter() - start)
            if pid is not None and len(latencies) in checkpoints:
                rss_at[len(latencies)] = round(memory_kb(pid)["VmRSS"] / 1024, 1)
            if response.status_code != 200 or response.json().get("status") != "success":
                failures.append(f"{response.status_code} {response.text[:200]}")

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return np.asarray(latencies), wall, failures, rss_at


def get_json(url):
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as reply:
        return json.load(reply)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="work folder (bundle, images, results.json)")
    parser.add_argument(
        "--requests",
        type=int,
        nargs="+",
        default=[1000],
        help="requests per concurrency level: one number for every level, or one per level (1000)",
    )
    parser.add_argument(
        "--rss-at",
        type=int,
        nargs="*",
        default=[100, 500, 1000, 2000],
        help="answered requests of a level at which the server's RSS is read (100 500 1000 2000)",
    )
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32], help="concurrency levels (1 8 32)")
    parser.add_argument("--size", type=int, default=64, help="bundle input size in pixels (64, as the demo)")
    parser.add_argument("--views", type=int, default=8, help="test-time views of the bundle (8)")
    parser.add_argument("--image-size", type=int, default=256, help="side of the uploaded JPEGs (256)")
    parser.add_argument("--distinct", type=int, default=16, help="distinct images cycled through (16)")
    parser.add_argument("--predict-runs", type=int, default=3, help="inclinet-predict processes timed (3; 0: none)")
    parser.add_argument(
        "--no-release",
        action="store_true",
        help="for comparison: serve without returning the C heap's free memory after each batch",
    )
    args = parser.parse_args(argv)
    if len(args.requests) not in (1, len(args.levels)):
        parser.error(f"--requests: give one number or one per level ({len(args.levels)}), not {len(args.requests)}")
    per_level = args.requests * len(args.levels) if len(args.requests) == 1 else args.requests
    args.work.mkdir(parents=True, exist_ok=True)
    bundle = build_bundle(args.work, args.size, args.views)
    images = [galaxy_jpeg(args.image_size, seed) for seed in range(args.distinct)]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = open(args.work / "serve.log", "wb")  # noqa: SIM115 -- closed at the end
    started = time.perf_counter()
    serve = ["--bundle", str(bundle), "--port", str(port), "-q"]
    if args.no_release:
        launcher = [
            "-c",
            "import sys; from inclinet.service import inference; "
            "inference.release_free_memory = lambda: False; "
            "from inclinet.service.cli import main; sys.exit(main(sys.argv[1:]))",
        ]
    else:
        launcher = ["-m", "inclinet.service.cli"]
    server = subprocess.Popen(
        [sys.executable, *launcher, *serve],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    results = {
        "requests_per_level": per_level,
        "release_memory": not args.no_release,
        "size": args.size,
        "views": args.views,
        "image_size": args.image_size,
        "jpeg_bytes": int(np.mean([len(b) for b in images])),
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg()[0],
        "python": platform.python_version(),
        "levels": [],
    }
    try:
        while True:
            try:
                get_json(f"{url}/api/health")
                break
            except OSError:
                if server.poll() is not None or time.perf_counter() - started > 180:
                    raise SystemExit(f"inclinet-serve did not start; see {args.work / 'serve.log'}") from None
                time.sleep(0.5)
        results["startup_s"] = round(time.perf_counter() - started, 1)
        results["rss_idle_mb"] = memory_kb(server.pid)["VmRSS"] / 1024
        for concurrency, n_requests in zip(args.levels, per_level):
            before = memory_kb(server.pid)
            health = get_json(f"{url}/api/health")
            latencies, wall, failures, rss_at = asyncio.run(
                load(url, images, n_requests, concurrency, pid=server.pid, checkpoints=set(args.rss_at))
            )
            after = memory_kb(server.pid)
            health_after = get_json(f"{url}/api/health")
            if failures:
                raise SystemExit(f"{len(failures)} request(s) failed at concurrency {concurrency}: {failures[0]}")
            batches = health_after["batches"] - health["batches"]
            level = {
                "concurrency": concurrency,
                "requests": len(latencies),
                "wall_s": round(wall, 2),
                "requests_per_s": round(len(latencies) / wall, 1),
                **{f"p{q}_ms": round(float(np.percentile(latencies, q)) * 1000, 1) for q in (50, 95, 99)},
                "max_ms": round(float(latencies.max()) * 1000, 1),
                "mean_batch": round(len(latencies) / max(batches, 1), 2),
                "rss_before_mb": round(before["VmRSS"] / 1024, 1),
                "rss_after_mb": round(after["VmRSS"] / 1024, 1),
                "peak_rss_mb": round(after["VmHWM"] / 1024, 1),
                "rss_at_mb": {str(n): mb for n, mb in sorted(rss_at.items())},
            }
            results["levels"].append(level)
            print(f"concurrency {concurrency}: {level}", file=sys.stderr)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        log.close()
    image_path = args.work / "one.jpg"
    image_path.write_bytes(images[0])
    times = []
    for _ in range(args.predict_runs):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "inclinet.stages.predict", "--bundle", str(bundle), str(image_path), "-q"],
            check=True,
            capture_output=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        times.append(time.perf_counter() - start)
    results["predict_process_s"] = round(float(np.median(times)), 2) if times else None
    results["load_average_at_end"] = os.getloadavg()[0]
    (args.work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(report(results))


def report(results):
    lines = [
        f"Bundle: 3 model4 members at {results['size']} px, {results['views']} views; uploads: "
        f"{results['image_size']} px JPEGs (~{results['jpeg_bytes'] // 1024} KB); "
        f"{'/'.join(map(str, results['requests_per_level']))} requests per level; {results['cpus']} cores, "
        f"load average {results['load_average_at_start']:.1f} at start.",
        f"Server start-up (models loaded and warmed up) {results['startup_s']} s; RSS idle "
        f"{results['rss_idle_mb']:.0f} MB; free heap memory returned after each batch: "
        f"{'yes' if results.get('release_memory', True) else 'no (--no-release)'}.",
        "",
        "| clients | requests/s | p50 ms | p95 ms | p99 ms | max ms | mean batch | RSS before -> after MB "
        "| peak RSS MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for level in results["levels"]:
        lines.append(
            f"| {level['concurrency']} | {level['requests_per_s']} | {level['p50_ms']} | {level['p95_ms']} | "
            f"{level['p99_ms']} | {level['max_ms']} | {level['mean_batch']} | {level['rss_before_mb']} -> "
            f"{level['rss_after_mb']} | {level['peak_rss_mb']} |"
        )
    lines += [
        "",
        "Server RSS (MB) after n answered requests of a level:",
        "",
        "| clients | " + " | ".join(f"n = {n}" for n in checkpoints(results)) + " |",
        "|---:|" + "---:|" * len(checkpoints(results)),
    ]
    for level in results["levels"]:
        lines.append(
            f"| {level['concurrency']} | "
            + " | ".join(str(level["rss_at_mb"].get(n, "")) for n in checkpoints(results))
            + " |"
        )
    if results["predict_process_s"] is not None:
        lines += [
            "",
            f"One `inclinet-predict` process per image: {results['predict_process_s']} s (median of the runs).",
        ]
    return "\n".join(lines)


def checkpoints(results):
    return sorted({n for level in results["levels"] for n in level["rss_at_mb"]}, key=int)


if __name__ == "__main__":
    main()
