"""`moeclip-jax serve`: HTTP inference with dynamic batching + a web page.

  errors.py   stable error codes -> HTTP status ({"error": {code, message}});
  decode.py   bytes -> RGB uint8 with the byte / pixel / mode checks;
  engine.py   a loaded detector behind fixed jitted batch buckets, scored
              exactly as `moeclip-jax predict` scores;
  prompts.py  InCTRL prompt sets per class (--prompts, POST /v1/prompts);
  batcher.py  coalesces concurrent requests into one jitted call;
  app.py      the FastAPI routes, request log, timeouts, the static page;
  server.py   uvicorn with graceful SIGTERM.

FastAPI / uvicorn are the optional `[serve]` extra; importing this package
does not import them.
"""
