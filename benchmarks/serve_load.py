"""Bounded load test of `moeclip-jax serve` on 127.0.0.1: batching on/off.

Starts two servers on free localhost ports from the same checkpoint, one
with `--max-batch B` (batched) and one with `--max-batch 1` (the
reference), then runs interleaved rounds: in each round, for each
concurrency C (1, 4, 16) and each server, exactly N single-image
POST /v1/predict requests from C client workers, then it stops. Reports
per (server, C) the median over rounds of throughput (requests/s) and the
p50 / p95 / p99 latency over all rounds' requests, errors counted (any
non-200). Only 127.0.0.1 is contacted.

  python benchmarks/serve_load.py --checkpoint DIR --image IMG.png \\
      --requests 400 --rounds 3 --out benchmarks/results/serve_load.json

Without --checkpoint it builds the tiny CPU MoECLIP of the tests (the
reduced demo: random tiny CLIP, 32 px) in a temp folder first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"


def free_port() -> int:
  with socket.socket() as s:
    s.bind((HOST, 0))
    return s.getsockname()[1]


def tiny_checkpoint(folder) -> tuple[pathlib.Path, pathlib.Path]:
  """(detector dir, a test image) of the reduced demo (tests' fixture)."""
  sys.path.insert(0, str(ROOT / "tests"))
  import cli_fixtures  # pylint: disable=g-import-not-at-top

  from moeclip_jax.verbs import demo  # pylint: disable=g-import-not-at-top
  opts = demo.DemoOptions(out=str(pathlib.Path(folder) / "demo"),
                          **cli_fixtures.REDUCED)
  result = demo.run(opts)
  result["out"] = pathlib.Path(opts.out)
  return (pathlib.Path(result["detector"]),
          cli_fixtures.target_test_images(result)[0])


def start_server(checkpoint, max_batch: int, max_wait_ms: float, log):
  port = free_port()
  env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep
             + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.Popen(
      [sys.executable, "-m", "moeclip_jax.cli", "serve", "--checkpoint",
       str(checkpoint), "--host", HOST, "--port", str(port), "--max-batch",
       str(max_batch), "--max-wait-ms", str(max_wait_ms)],
      env=env, stdout=log, stderr=subprocess.STDOUT)
  return proc, f"http://{HOST}:{port}"


def wait_healthy(url: str, proc, timeout_s: float = 600.0) -> None:
  import httpx  # pylint: disable=g-import-not-at-top
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    if proc.poll() is not None:
      raise RuntimeError(f"server {url} exited {proc.returncode}")
    try:
      if httpx.get(url + "/healthz", timeout=5).status_code == 200:
        return
    except httpx.TransportError:
      pass
    time.sleep(0.5)
  raise TimeoutError(f"{url} never became healthy")


def request_bytes(port: int, data: bytes, name: str) -> bytes:
  """One keep-alive multipart POST /v1/predict, built once."""
  boundary = "moeclipjaxbench"
  body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\";"
          f" filename=\"{name}\"\r\nContent-Type: image/png\r\n\r\n"
          ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
  head = (f"POST /v1/predict HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
          f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
          f"Content-Length: {len(body)}\r\n\r\n").encode()
  return head + body


async def _one(reader, writer, raw: bytes) -> bool:
  """Sends one request, reads its reply; True for a 200 with a score."""
  writer.write(raw)
  await writer.drain()
  head = await reader.readuntil(b"\r\n\r\n")
  lines = head.decode("latin-1").split("\r\n")
  status = int(lines[0].split()[1])
  length = next(int(l.split(":", 1)[1]) for l in lines
                if l.lower().startswith("content-length:"))
  body = await reader.readexactly(length)
  return status == 200 and b'"score"' in body


async def load(url: str, data: bytes, name: str, requests: int,
               concurrency: int) -> dict:
  """Exactly `requests` POSTs from `concurrency` keep-alive connections.

  A minimal HTTP/1.1 client (asyncio streams), so that the load generator
  takes little of the CPU the server runs on.
  """
  port = int(url.rsplit(":", 1)[1])
  raw = request_bytes(port, data, name)
  latencies, errors = [], 0
  todo = iter(range(requests))

  async def worker():
    nonlocal errors
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
      for _ in todo:
        t0 = time.perf_counter()
        try:
          ok = await _one(reader, writer, raw)
        except (OSError, asyncio.IncompleteReadError, ValueError):
          ok = False
          writer.close()
          reader, writer = await asyncio.open_connection(HOST, port)
        latencies.append(time.perf_counter() - t0)
        errors += not ok
    finally:
      writer.close()

  start = time.perf_counter()
  await asyncio.gather(*[worker() for _ in range(concurrency)])
  seconds = time.perf_counter() - start
  return {"seconds": seconds, "throughput": requests / seconds,
          "latencies": latencies, "errors": errors}


def summarise(runs: list[dict]) -> dict:
  lat = np.concatenate([r["latencies"] for r in runs]) * 1000.0
  return {"throughput_rps": float(np.median([r["throughput"]
                                             for r in runs])),
          "p50_ms": float(np.percentile(lat, 50)),
          "p95_ms": float(np.percentile(lat, 95)),
          "p99_ms": float(np.percentile(lat, 99)),
          "errors": int(sum(r["errors"] for r in runs)),
          "requests": int(len(lat)), "rounds": len(runs)}


def table(results: dict, concurrencies, labels) -> str:
  lines = ["| server | concurrency | throughput (req/s) | p50 ms | p95 ms |"
           " p99 ms | errors |", "|---|---:|---:|---:|---:|---:|---:|"]
  for label in labels:
    for c in concurrencies:
      s = results[label][str(c)]
      lines.append(f"| {label} | {c} | {s['throughput_rps']:.1f} | "
                   f"{s['p50_ms']:.1f} | {s['p95_ms']:.1f} | "
                   f"{s['p99_ms']:.1f} | {s['errors']} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--checkpoint", default=None)
  p.add_argument("--image", default=None)
  p.add_argument("--requests", type=int, default=400)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
  p.add_argument("--max-batch", type=int, default=16)
  p.add_argument("--max-wait-ms", type=float, default=5.0)
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  tmp = tempfile.TemporaryDirectory()
  checkpoint, image = args.checkpoint, args.image
  if checkpoint is None:
    checkpoint, built_image = tiny_checkpoint(tmp.name)
    image = image or built_image
  if image is None:
    p.error("--image is required with --checkpoint")
  data, name = pathlib.Path(image).read_bytes(), pathlib.Path(image).name
  labels = {f"max-batch {args.max_batch}": args.max_batch,
            "max-batch 1": 1}
  log = open(pathlib.Path(tmp.name) / "servers.log", "wb")  # pylint: disable=consider-using-with
  servers = {label: start_server(checkpoint, b, args.max_wait_ms, log)
             for label, b in labels.items()}
  runs = {label: {c: [] for c in args.concurrency} for label in labels}
  try:
    for proc, url in servers.values():
      wait_healthy(url, proc)
    for label, (_, url) in servers.items():  # connection warm-up, untimed
      asyncio.run(load(url, data, name, 16, 4))
    for r in range(args.rounds):
      for c in args.concurrency:
        for label, (_, url) in servers.items():  # interleaved
          runs[label][c].append(asyncio.run(load(url, data, name,
                                                 args.requests, c)))
      print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
  finally:
    for proc, _ in servers.values():
      proc.send_signal(signal.SIGTERM)
    for proc, _ in servers.values():
      proc.wait(timeout=120)
    log.close()
  results = {label: {str(c): summarise(v) for c, v in by_c.items()}
             for label, by_c in runs.items()}
  top = str(max(args.concurrency))
  batched, single = (results[label][top]["throughput_rps"] for label in labels)
  report = {
      "command": " ".join([os.path.basename(sys.executable),
                           "benchmarks/serve_load.py"] + list(
                               argv if argv is not None else sys.argv[1:])),
      "machine": {"platform": platform.platform(),
                  "processor": platform.processor(),
                  "cpu_count": os.cpu_count(),
                  "python": platform.python_version()},
      "checkpoint": str(args.checkpoint or "tiny reduced-demo MoECLIP"),
      "image": name, "requests_per_run": args.requests,
      "rounds": args.rounds, "max_wait_ms": args.max_wait_ms,
      "results": results,
      f"speedup_at_concurrency_{top}": batched / single,
  }
  print(table(results, args.concurrency, list(labels)))
  print(f"\nbatched / max-batch 1 throughput at concurrency {top}: "
        f"{batched / single:.2f}x")
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
