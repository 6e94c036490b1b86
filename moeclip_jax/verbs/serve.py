"""`moeclip-jax serve`: an HTTP inference service and inspection web page.

Loads the detector (any method, from the checkpoint's config.json, like
`predict`), compiles every batch bucket, then serves the API and the page
at http://HOST:PORT/ (docs/serve.md). Needs `pip install -e ".[serve]"`.
"""

from __future__ import annotations

import importlib.util
import sys

import moeclip_jax
from moeclip_jax.verbs import common

EXAMPLES = """
  moeclip-jax serve --checkpoint runs/tiny/detector          # 127.0.0.1:8000
  moeclip-jax serve --checkpoint ckpt --port 9000 --max-batch 16 \\
      --max-wait-ms 5 --log-file serve.log
  moeclip-jax serve --checkpoint ckpt/inctrl_k2 --prompts good_candles/
  moeclip-jax serve --checkpoint ckpt --tile 512,64   # large images, tiled
  curl -F images=@part.png -F class_name=bottle -F return_map=png \\
      http://127.0.0.1:8000/v1/predict
"""


SERVE_PACKAGES = ("fastapi", "uvicorn", "python_multipart")  # the [serve] extra


def build_parser():
  p = common.parser("moeclip-jax serve", __doc__.split("\n\n")[0], EXAMPLES)
  p.add_argument("--checkpoint", required=True, help="detector folder")
  p.add_argument("--host", default="127.0.0.1",
                 help="bind address (default localhost only; 0.0.0.0 "
                      "exposes the server to the network)")
  p.add_argument("--port", type=int, default=8000)
  p.add_argument("--classes", nargs="+", default=None,
                 help="served classes (default: calibrated / trained / "
                      "prompt-set classes; any class when there are none)")
  p.add_argument("--max-batch", type=int, default=8,
                 help="largest jitted batch (buckets 1, 2, 4, ... compiled "
                      "at start-up)")
  p.add_argument("--max-wait-ms", type=float, default=10.0,
                 help="how long a request waits for others to batch with")
  p.add_argument("--max-bytes", type=int, default=20 * 2**20,
                 help="largest image file in bytes (413 above)")
  p.add_argument("--max-pixels", type=int, default=40_000_000,
                 help="largest width x height (413 above)")
  p.add_argument("--max-images", type=int, default=32,
                 help="images per request (413 above)")
  p.add_argument("--timeout-s", type=float, default=30.0,
                 help="per-request limit (503 above; the server stays up)")
  p.add_argument("--log-file", default=None,
                 help="also append the request log here")
  common.add_tile_options(p)  # every posted image tiled, as predict --tile
  common.add_method_options(p, "serve")
  return p


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  try:
    from moeclip_jax.serve import app as app_lib  # pylint: disable=g-import-not-at-top
    from moeclip_jax.serve import engine as engine_lib  # pylint: disable=g-import-not-at-top
    from moeclip_jax.serve import server  # pylint: disable=g-import-not-at-top
  except ImportError as err:
    missing = err.name
  else:
    missing = next((m for m in SERVE_PACKAGES
                    if importlib.util.find_spec(m) is None), None)
  if missing:
    print(f"error: {missing} is missing: pip install -e \".[serve]\"",
          file=sys.stderr)
    return 2
  try:
    config = app_lib.ServeConfig(
        max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
        max_bytes=args.max_bytes, max_pixels=args.max_pixels,
        max_images=args.max_images, timeout_s=args.timeout_s,
        log_file=args.log_file, version=moeclip_jax.__version__)
    tile = common.tile_spec(args)
    common.quiet_console()
    detector = common.load_detector(args.checkpoint,
                                    common.method_options(args))
    engine = engine_lib.Engine(detector, args.max_batch, args.classes, tile)
  except (ValueError, FileNotFoundError, KeyError) as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  print(f"serving {engine.method} from {args.checkpoint} on "
        f"http://{args.host}:{args.port}/ (compiling buckets "
        f"{list(engine.buckets)}; /healthz says ok when ready)",
        file=sys.stderr, flush=True)
  return server.serve(app_lib.create_app(engine, config), args.host,
                      args.port)


if __name__ == "__main__":
  sys.exit(main())
