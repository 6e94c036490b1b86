"""The FastAPI application: routes, request log, timeouts, the web page.

Routes (docs/serve.md; FastAPI's OpenAPI page at /docs):
  GET  /            the inspection page (static, in the package);
  GET  /healthz     200 {"status": "ok"} once warm-up compiled, else 503;
  GET  /v1/model    method, image size, classes, thresholds, protocol, ...;
  GET  /v1/stats    batches run so far {"batches": [[images, bucket, n]],
                    "tiled": {"images", "tiles"} (--tile),
                    "in_flight": predict requests being handled};
  POST /v1/predict  multipart `images` (repeatable) + fields, or JSON with
                    base64 images -> {"results": [...]};
  POST /v1/prompts  few-shot detectors (`prompt_shots` in /v1/model): K
                    normal images (multipart `images`, optional
                    `class_name`, `seed`).
"""


import asyncio
import atexit
import concurrent.futures
import contextlib
import dataclasses
import logging
import logging.handlers
import pathlib
import queue
import sys
import time
import urllib.parse

from moeclip_jax.serve import batcher as batcher_lib
from moeclip_jax.serve import decode, errors, forms

STATIC = pathlib.Path(__file__).parent / "static"
RETURN_MAPS = ("none", "png", "array")
MAX_MAP_SIZE = 4096


@dataclasses.dataclass
class ServeConfig:
  """Limits and behaviour of one server (the CLI flags)."""

  max_batch: int = 8
  max_wait_ms: float = 10.0
  max_bytes: int = 20 * 2**20
  max_pixels: int = 40_000_000
  max_images: int = 32
  timeout_s: float = 30.0
  log_file: str | None = None
  decode_threads: int = 4
  version: str = dataclasses.field(default_factory=lambda: package_version())

  def __post_init__(self):
    for flag, value, low in (("--max-batch", self.max_batch, 1),
                             ("--max-wait-ms", self.max_wait_ms, 0),
                             ("--max-bytes", self.max_bytes, 1),
                             ("--max-pixels", self.max_pixels, 1),
                             ("--max-images", self.max_images, 1),
                             ("--timeout-s", self.timeout_s, 0)):
      if not value >= low:
        raise ValueError(f"{flag} must be >= {low}, got {value}")


def package_version() -> str:
  """The installed moeclip_jax's version (the verb passes its own)."""
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  try:
    return metadata.version("moeclip_jax")
  except metadata.PackageNotFoundError:
    return "unknown"


_ACCESS_LISTENER: list = []  # the running QueueListener, if any


def _stop_access_listener() -> None:
  while _ACCESS_LISTENER:
    _ACCESS_LISTENER.pop().stop()


atexit.register(_stop_access_listener)


def access_logger(log_file: str | None) -> logging.Logger:
  """One line per request to stderr and `log_file` (nothing else).

  The event loop only queues the record; a listener thread formats and
  writes it (the write and flush cost the loop ~7 % of its time per
  request under load otherwise). Records are flushed at exit.
  """
  logger = logging.getLogger("moeclip_jax.serve.access")
  logger.setLevel(logging.INFO)
  logger.propagate = False
  for handler in list(logger.handlers):
    logger.removeHandler(handler)
    handler.close()
  _stop_access_listener()
  fmt = logging.Formatter("%(asctime)s %(message)s")
  handlers = [logging.StreamHandler(sys.stderr)]
  if log_file:
    handlers.append(logging.FileHandler(log_file))
  for handler in handlers:
    handler.setFormatter(fmt)
  records: queue.SimpleQueue = queue.SimpleQueue()
  listener = logging.handlers.QueueListener(records, *handlers)
  listener.start()
  _ACCESS_LISTENER.append(listener)
  logger.addHandler(logging.handlers.QueueHandler(records))
  return logger


class AccessLog:
  """ASGI middleware: one line per HTTP request (method, path, status, ms).
  """

  def __init__(self, app, logger: logging.Logger):
    self.app = app
    self.logger = logger

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http":
      return await self.app(scope, receive, send)
    start = time.perf_counter()
    status = [500]

    async def send_status(message):
      if message["type"] == "http.response.start":
        status[0] = message["status"]
      await send(message)

    try:
      await self.app(scope, receive, send_status)
    finally:
      self.logger.info("%s %s %d %.1fms", scope["method"], scope["path"],
                       status[0], (time.perf_counter() - start) * 1000.0)


def _error_response(err: errors.ApiError):
  from fastapi.responses import JSONResponse  # pylint: disable=g-import-not-at-top
  return JSONResponse(err.body(), status_code=err.status)


class Service:
  """Request handling around an `engine.Engine` (see the module docstring).
  """

  def __init__(self, engine, config: ServeConfig):
    self.engine = engine
    self.config = config
    self.batcher = batcher_lib.Batcher(engine.run, config.max_batch,
                                       config.max_wait_ms)
    self.pool = None
    self.warm_error = None
    self.in_flight = 0  # predict requests being handled

  # ---- life ----
  async def start(self) -> None:
    self.pool = concurrent.futures.ThreadPoolExecutor(
        self.config.decode_threads, thread_name_prefix="moeclip-decode")
    self.batcher.start()
    self._warm = asyncio.get_running_loop().create_task(self._warm_up())

  async def _warm_up(self) -> None:
    try:
      await self.batcher.call(self.engine.warm_up)
    except Exception as err:  # pylint: disable=broad-except
      self.warm_error = f"{type(err).__name__}: {err}"
      logging.getLogger("moeclip_jax.serve").error("warm-up failed: %s",
                                                   self.warm_error)

  async def stop(self) -> None:
    await self._warm
    await self.batcher.stop()
    self.pool.shutdown(wait=True)

  async def in_pool(self, fn, *args):
    return await asyncio.get_running_loop().run_in_executor(self.pool, fn,
                                                            *args)

  # ---- requests ----
  def body_limit(self) -> int:
    return self.config.max_images * (self.config.max_bytes * 4 // 3
                                     + 4096) + 2**20

  async def read_request(self, request):
    """(fields, [(name, bytes or ApiError)]) of multipart or JSON."""
    body = await forms.read_body(request, self.body_limit())
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
      fields, files = forms.parse_multipart(body, ctype)
      return fields, [(fname or f"images[{i}]", data) for i, (field, fname,
                      data) in enumerate(f for f in files
                                         if f[0] == "images")]
    if ctype.startswith("application/x-www-form-urlencoded"):
      fields = dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace")))
      return fields, []  # a form with no file field
    if ctype.startswith("application/json"):
      data = forms.parse_json(body)
      images = data.pop("images", None) or []
      if not isinstance(images, list):
        raise errors.ApiError("bad_request", "JSON `images` must be a list "
                              "of base64 strings")
      items = []
      for i, text in enumerate(images):
        name = f"images[{i}]"
        try:
          items.append((name, decode.from_base64(text, name)))
        except errors.ApiError as err:
          items.append((name, err))
      return data, items
    raise errors.ApiError("bad_request", "send multipart/form-data (field "
                          "`images`) or application/json, got "
                          f"{ctype or 'no content type'!r}")

  def options(self, fields: dict) -> dict:
    """Checked request options (400 on bad values)."""
    return_map = str(fields.get("return_map") or "none")
    if return_map not in RETURN_MAPS:
      raise errors.ApiError("bad_request", f"return_map must be one of "
                            f"{', '.join(RETURN_MAPS)}, got {return_map!r}")
    size = fields.get("map_size")
    if size in (None, ""):
      size = None
    else:
      try:
        size = int(size)
      except (TypeError, ValueError):
        size = -1
      if not 1 <= size <= MAX_MAP_SIZE:
        raise errors.ApiError("bad_request", "map_size must be an integer "
                              f"in [1, {MAX_MAP_SIZE}], got "
                              f"{fields.get('map_size')!r}")
    threshold = fields.get("threshold")
    threshold = "auto" if threshold in (None, "") else threshold
    return {"class_name": fields.get("class_name") or None,
            "threshold": threshold, "return_map": return_map,
            "map_size": size}

  def check_ready(self):
    if self.warm_error:
      raise errors.ApiError("internal", f"warm-up failed: {self.warm_error}")
    if not self.engine.ready:
      raise errors.ApiError("warming_up", "the model is still compiling its "
                            "batch sizes; retry when /healthz says ok")

  async def predict(self, request) -> tuple[int, dict]:
    self.in_flight += 1
    try:
      return await self._predict(request)
    finally:
      self.in_flight -= 1

  async def _predict(self, request) -> tuple[int, dict]:
    deadline = time.perf_counter() + self.config.timeout_s
    self.check_ready()
    self.batcher.expect()  # its images are on their way
    try:
      fields, items = await self.read_request(request)
    finally:
      self.batcher.settle()
    opts = self.options(fields)
    if not items:
      raise errors.ApiError("no_images", "no images: send one or more files "
                            "in the multipart field `images` (or JSON "
                            "`images`: [base64, ...])")
    if len(items) > self.config.max_images:
      raise errors.ApiError("too_many_images", f"{len(items)} images, over "
                            f"the limit of {self.config.max_images} "
                            "(--max-images)")
    try:
      class_name = self.engine.resolve_class(opts["class_name"])
      self.engine.check_ready(class_name)
      shared = None
    except errors.ApiError as err:
      shared = err
    if shared is None:
      rule = self.engine.rule(opts["threshold"], class_name)
      entries = await self._score(items, class_name, rule, opts, deadline)
    else:
      entries = [shared] * len(items)
    if len(entries) == 1 and isinstance(entries[0], errors.ApiError):
      return entries[0].status, entries[0].body()
    return 200, {"results": [e.body() if isinstance(e, errors.ApiError)
                             else e for e in entries]}

  async def _score(self, items, class_name, rule, opts, deadline):
    cfg = self.config

    async def one(name, data):
      if isinstance(data, errors.ApiError):
        raise data
      self.batcher.expect()
      try:
        image = await self.in_pool(decode.decode_image, data, name,
                                   cfg.max_bytes, cfg.max_pixels)
        pending = (None if self.engine.tile is not None
                   else self.batcher.submit(image, class_name))
      finally:
        self.batcher.settle()
      scored, timings = await (self._tiled(image, class_name)
                               if pending is None else pending)
      finish = (self.engine.finish, scored, image.shape[:2], rule,
                opts["return_map"], opts["map_size"])
      entry = (finish[0](*finish[1:]) if opts["return_map"] == "none"
               else await self.in_pool(*finish))  # maps: off the loop
      entry["timings"] = timings
      return entry

    tasks = [asyncio.ensure_future(one(n, d)) for n, d in items]
    left = max(0.0, deadline - time.perf_counter())
    done, pending = await asyncio.wait(tasks, timeout=left)
    if pending:
      for task in pending:
        task.cancel()
      raise errors.ApiError("timeout", f"request took over --timeout-s "
                            f"{cfg.timeout_s:g} s (server busy); retry")
    out = []
    for task in tasks:
      err = task.exception()
      if err is not None and not isinstance(err, errors.ApiError):
        err = errors.ApiError("internal", f"{type(err).__name__}: {err}")
      out.append(err if err is not None else task.result())
    return out

  async def _tiled(self, image, class_name: str):
    """(Scored, timings) of one image in tiles (`serve --tile`): its own
    call on the compute thread, not the batcher's queue; the tiles are
    batched in the engine."""
    queued = time.perf_counter()

    def run():
      start = time.perf_counter()
      scored, facts = self.engine.run_tiled(image, class_name)
      return scored, facts, start, time.perf_counter()

    scored, facts, start, end = await self.batcher.call(run)
    return scored, {"queue_ms": round((start - queued) * 1000.0, 3),
                    "compute_ms": round((end - start) * 1000.0, 3),
                    **facts}

  async def upload_prompts(self, request) -> dict:
    self.check_ready()
    if self.engine.prompt_shots is None:
      raise errors.ApiError("bad_request", f"{self.engine.method} detectors "
                            "take no prompt images")
    fields, items = await self.read_request(request)
    if not items:
      raise errors.ApiError("no_images", "no prompt images in `images`")
    class_name = fields.get("class_name") or None
    if class_name and self.engine.given_classes \
        and class_name not in self.engine.given_classes:
      raise errors.ApiError("unknown_class", f"class {class_name!r} is not "
                            "served (--classes)")
    try:
      seed = fields.get("seed")
      seed = None if seed in (None, "") else int(seed)  # None: the detector's
    except (TypeError, ValueError):
      raise errors.ApiError("bad_request", "seed must be an integer, got "
                            f"{fields.get('seed')!r}") from None
    images = []
    for name, data in items:
      if isinstance(data, errors.ApiError):
        raise data
      images.append(await self.in_pool(decode.decode_image, data, name,
                                       self.config.max_bytes,
                                       self.config.max_pixels))
    names = [n for n, _ in items]
    facts = await self.batcher.call(self.engine.add_prompts, images, names,
                                    class_name, seed)
    return {"class_name": class_name, "shots": facts["shots"],
            "seed": facts["seed"],
            "images": list(facts["paths"]), "classes": self.engine.classes()}


def create_app(engine, config: ServeConfig | None = None):
  """The FastAPI app serving `engine` (an `engine.Engine`)."""
  from fastapi import FastAPI, Request  # pylint: disable=g-import-not-at-top
  from fastapi.responses import FileResponse, JSONResponse  # pylint: disable=g-import-not-at-top
  from fastapi.staticfiles import StaticFiles  # pylint: disable=g-import-not-at-top

  config = config or ServeConfig()
  service = Service(engine, config)
  access = access_logger(config.log_file)

  @contextlib.asynccontextmanager
  async def lifespan(app):
    del app
    await service.start()
    try:
      yield
    finally:
      await service.stop()

  app = FastAPI(title="moeclip-jax serve", version=config.version,
                lifespan=lifespan,
                description="Anomaly scores and maps of a moeclip_jax "
                            "detector (docs/serve.md).")
  app.state.service = service

  app.add_middleware(AccessLog, logger=access)

  @app.exception_handler(errors.ApiError)
  async def api_error(request, err: errors.ApiError):
    del request
    return _error_response(err)

  @app.get("/", include_in_schema=False)
  async def index():
    return FileResponse(STATIC / "index.html")

  app.mount("/static", StaticFiles(directory=STATIC), name="static")

  @app.get("/healthz")
  async def healthz():
    if service.warm_error:
      return JSONResponse({"status": "error", "message": service.warm_error},
                          status_code=503)
    if not engine.ready:
      return JSONResponse({"status": "warming_up"}, status_code=503)
    return {"status": "ok"}

  @app.get("/v1/model")
  async def model():
    return dict(engine.describe(), version=config.version,
                ready=engine.ready, max_batch=config.max_batch,
                max_bytes=config.max_bytes, max_pixels=config.max_pixels,
                max_images=config.max_images)

  @app.get("/v1/stats")
  async def stats():
    return {"batches": [[n, b, c] for (n, b), c in
                        sorted(engine.batches.items())],
            "tiled": dict(engine.tiled), "in_flight": service.in_flight}

  @app.post("/v1/predict", openapi_extra=PREDICT_OPENAPI)
  async def predict(request: Request):
    status, body = await service.predict(request)
    return JSONResponse(body, status_code=status)

  @app.post("/v1/prompts", openapi_extra=PROMPTS_OPENAPI)
  async def prompts(request: Request):
    return await service.upload_prompts(request)

  return app


_OPTIONS = {
    "class_name": {"type": "string"},
    "threshold": {"type": "string", "description": "'auto' or a number"},
    "return_map": {"type": "string", "enum": list(RETURN_MAPS)},
    "map_size": {"type": "integer", "description": "longer side of the map"},
}
PREDICT_OPENAPI = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": dict(
        images={"type": "array", "items": {"type": "string",
                                           "format": "binary"}},
        **_OPTIONS), "required": ["images"]}},
    "application/json": {"schema": {"type": "object", "properties": dict(
        images={"type": "array", "items": {"type": "string",
                                           "format": "byte"}},
        **_OPTIONS), "required": ["images"]}}}}}
PROMPTS_OPENAPI = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "images": {"type": "array", "items": {"type": "string",
                                              "format": "binary"}},
        "class_name": {"type": "string"}, "seed": {"type": "integer"}},
        "required": ["images"]}}}}}
