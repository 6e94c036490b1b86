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
    "bad_prompts": 400,          # a prompt-image upload unusable
    "too_many_bytes": 413,       # file over --max-bytes
    "too_many_pixels": 413,      # width x height over --max-pixels
    "too_many_images": 413,      # more than --max-images in one request
    "unknown_class": 422,        # class_name not served
    # 409 NOT_READY: the class lacks what the detector needs; the detector
    # names the code (`Detector.not_ready`: e.g. "prompts_missing").
    "internal": 500,             # the model call failed
    "warming_up": 503,           # buckets still compiling
    "timeout": 503,              # over --timeout-s
    "shutting_down": 503,        # SIGTERM received
}


NOT_READY = 409


class ApiError(Exception):
  """An error with a stable code (see STATUS; `status` for the codes a
  detector names)."""

  def __init__(self, code: str, message: str, status: int | None = None):
    if status is None and code not in STATUS:
      raise KeyError(f"unknown error code {code!r}")
    super().__init__(message)
    self.code = code
    self.message = message
    self.status = STATUS[code] if status is None else status

  def body(self) -> dict:
    return {"error": {"code": self.code, "message": self.message}}
