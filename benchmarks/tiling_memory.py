"""Peak memory of tiled inference (`--tile`) on large images, tiny model.

Each configuration runs in a fresh child process (ru_maxrss is a process
high-water mark): load the tiny random InCTRL checkpoint of the tests
(32 px tiny-test CLIP; prompts = 2 synthetic normal images), warm the jitted
forward up on a small image, record the peak RSS (the reference), then
predict one random uint8 SIDE x SIDE image with `tiling.predict_tiled` and
record the new peak. The increase is compared with the image itself
(SIDE^2 x 3 bytes) and the one float32 accumulator (SIDE^2 x 4 bytes) that
tiling keeps, and with what holding every tile's map would take. The same
8000 px image with 4x the tiles shows that the peak does not grow with the
tile count. The `verb` configuration runs `moeclip-jax predict --tile`
end to end on an 8000x8000 PNG (overlay included).

  /work/venv/bin/python benchmarks/tiling_memory.py \
      --out benchmarks/results/tiling_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CONFIGS = (  # (name, side, tile, overlap)
    ("2000px", 2000, 512, 64),
    ("8000px", 8000, 512, 64),
    ("8000px_4x_tiles", 8000, 256, 32),
)


def _peak_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _setup(work: str) -> tuple[str, str]:
  """The tiny InCTRL checkpoint and a folder of 2 prompt images."""
  sys.path.insert(0, os.path.join(REPO, "tests"))
  import cli_fixtures  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  ckpt = os.path.join(work, "inctrl")
  if not os.path.isdir(ckpt):
    cli_fixtures.tiny_inctrl_checkpoint(ckpt)
  prompts = os.path.join(work, "prompts")
  os.makedirs(prompts, exist_ok=True)
  rng = np.random.default_rng(1)
  for i in range(2):
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8)).save(
        os.path.join(prompts, f"p{i}.png"))
  return ckpt, prompts


def child(ckpt, prompts, side, tile, overlap, batch_size) -> dict:
  import moeclip_jax  # pylint: disable=g-import-not-at-top
  from moeclip_jax.inference import tiling  # pylint: disable=g-import-not-at-top
  det = moeclip_jax.load_detector(ckpt, prompts=[prompts])
  det.begin_predict(None, "object", None)
  spec = tiling.TileSpec(tile, overlap)
  warm = np.zeros((tile * 2, tile * 2, 3), np.uint8)
  tiling.predict_tiled(det, warm, "object", spec, batch_size)
  reference = _peak_mib()
  image = np.random.default_rng(0).integers(0, 256, (side, side, 3),
                                            np.uint8)
  start = time.perf_counter()
  p = tiling.predict_tiled(det, image, "object", spec, batch_size)
  seconds = time.perf_counter() - start
  peak = _peak_mib()
  tiles = p.grid[0] * p.grid[1]
  return {"side": side, "tile": tile, "overlap": overlap, "tiles": tiles,
          "batch_size": batch_size, "seconds": round(seconds, 2),
          "reference_peak_mib": round(reference, 1),
          "peak_mib": round(peak, 1),
          "increase_mib": round(peak - reference, 1),
          "image_mib": round(image.nbytes / 2**20, 1),
          "accumulator_mib": round(side * side * 4 / 2**20, 1),
          "all_tile_maps_would_be_mib": round(
              tiles * tile * tile * 4 / 2**20, 1),
          "map_finite": bool(np.isfinite(p.anomaly_map).all())}


def verb(ckpt, prompts, work, side, tile, overlap) -> dict:
  """`moeclip-jax predict --tile` on a SIDE x SIDE PNG, in a child."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  path = os.path.join(work, "big", "big.png")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if not os.path.isfile(path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (side, side, 3), np.uint8)).save(
        path, compress_level=1)
  code = ("import resource, sys; from moeclip_jax import cli; "
          "rc = cli.main(sys.argv[1:]); "
          "print('PEAK', resource.getrusage(resource.RUSAGE_SELF)"
          ".ru_maxrss / 1024.0); sys.exit(rc)")
  start = time.perf_counter()
  out = subprocess.run(
      [sys.executable, "-c", code, "predict", path, "--checkpoint", ckpt,
       "--prompts", prompts, "--tile", f"{tile},{overlap}", "--out",
       os.path.join(work, "pred")], capture_output=True, text=True,
      check=False, cwd=REPO)
  seconds = time.perf_counter() - start
  if out.returncode != 0:
    raise RuntimeError(out.stderr[-2000:])
  peak = float(out.stdout.split("PEAK")[-1].split()[0])
  return {"side": side, "tile": tile, "overlap": overlap,
          "seconds": round(seconds, 1), "peak_mib": round(peak, 1)}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default=None)
  parser.add_argument("--batch-size", type=int, default=8)
  parser.add_argument("--work", default=None, help="scratch folder")
  parser.add_argument("--child", nargs=5, default=None,
                      metavar=("CKPT", "PROMPTS", "SIDE", "TILE", "OVERLAP"))
  parser.add_argument("--skip-verb", action="store_true")
  args = parser.parse_args(argv)
  if args.child:
    ckpt, prompts, side, tile, overlap = args.child
    print(json.dumps(child(ckpt, prompts, int(side), int(tile), int(overlap),
                           args.batch_size)))
    return 0
  work = args.work or tempfile.mkdtemp(prefix="tiling_memory_")
  ckpt, prompts = _setup(work)
  results = {"machine": {"platform": platform.platform(),
                         "cpus": os.cpu_count(),
                         "load_avg_start": os.getloadavg()},
             "command": " ".join([os.path.relpath(sys.argv[0], REPO)]
                                 + sys.argv[1:]), "runs": {}}
  for name, side, tile, overlap in CONFIGS:
    out = subprocess.run(
        [sys.executable, __file__, "--batch-size", str(args.batch_size),
         "--child", ckpt, prompts, str(side), str(tile), str(overlap)],
        capture_output=True, text=True, check=True, cwd=REPO)
    results["runs"][name] = json.loads(out.stdout.strip().splitlines()[-1])
    print(name, results["runs"][name], flush=True)
  if not args.skip_verb:
    results["runs"]["predict_verb_8000px"] = verb(ckpt, prompts, work, 8000,
                                                  512, 64)
    print("predict_verb_8000px", results["runs"]["predict_verb_8000px"])
  results["machine"]["load_avg_end"] = os.getloadavg()
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
