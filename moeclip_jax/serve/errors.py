"""API errors: a stable `code`, its HTTP status and a message naming the
problem. Every error reply is {"error": {"code": ..., "message": ...}}."""

from __future__ import annotations

# code -> HTTP status (docs/serve.md lists them; clients key on the code).
STATUS = {
    "bad_request": 400,          # malformed fields, JSON or base64
    "no_images": 400,            # no `images` in the request
    "empty_image": 400,          # a zero-byte file
    "not_an_image": 400,         # bytes no image decoder recognises
    "truncated_image": 400,      # the decoder ran out of data
    "unsupported_mode": 400,     # e.g. a float32 ("F") TIFF
    "bad_prompts": 400,          # InCTRL prompt upload unusable
    "too_many_bytes": 413,       # file over --max-bytes
    "too_many_pixels": 413,      # width x height over --max-pixels
    "too_many_images": 413,      # more than --max-images in one request
    "unknown_class": 422,        # class_name not served
    "prompts_missing": 409,      # InCTRL: no prompt set for the class
    "class_statistics_missing": 409,  # AnomalyMoE: no class min-max
    "internal": 500,             # the model call failed
    "warming_up": 503,           # buckets still compiling
    "timeout": 503,              # over --timeout-s
    "shutting_down": 503,        # SIGTERM received
}


class ApiError(Exception):
  """An error with a stable code (see STATUS)."""

  def __init__(self, code: str, message: str):
    if code not in STATUS:
      raise KeyError(f"unknown error code {code!r}")
    super().__init__(message)
    self.code = code
    self.message = message

  @property
  def status(self) -> int:
    return STATUS[self.code]

  def body(self) -> dict:
    return {"error": {"code": self.code, "message": self.message}}
