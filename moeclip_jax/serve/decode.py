"""Uploaded bytes -> RGB uint8 [H, W, 3], refusing what the server must not
decode: over --max-bytes, over --max-pixels (checked from the header before
the pixels are decoded), not an image, truncated, unsupported mode."""

from __future__ import annotations

import base64
import binascii
import io
import warnings

import numpy as np

from moeclip_jax.serve import errors
from moeclip_jax.utils import images as image_utils


def decode_image(data: bytes, name: str, max_bytes: int,
                 max_pixels: int) -> np.ndarray:
  """Checked decode of one upload (`name` is used in messages)."""
  from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top
  if not data:
    raise errors.ApiError("empty_image", f"{name}: empty file")
  if len(data) > max_bytes:
    raise errors.ApiError("too_many_bytes", f"{name}: {len(data)} bytes, "
                          f"over the limit of {max_bytes} (--max-bytes)")
  with warnings.catch_warnings():
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    try:
      im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
      raise errors.ApiError("not_an_image", f"{name}: not an image (no "
                            "decoder recognises its bytes)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning,
            OSError, SyntaxError, ValueError) as err:
      raise errors.ApiError("not_an_image",
                            f"{name}: unreadable image header ({err})"
                            ) from None
  with im:
    w, h = im.size
    if w * h > max_pixels:
      raise errors.ApiError("too_many_pixels", f"{name}: {w}x{h} = {w * h} "
                            f"pixels, over the limit of {max_pixels} "
                            "(--max-pixels)")
    if im.mode not in image_utils.RGB_MODES:
      raise errors.ApiError("unsupported_mode", f"{name}: image mode "
                            f"{im.mode!r} is not supported (8/16-bit grey, "
                            "palette, RGB(A), CMYK)")
    try:
      im.load()
    except (OSError, SyntaxError, ValueError) as err:
      raise errors.ApiError("truncated_image", f"{name}: truncated or "
                            f"corrupt image data ({err})") from None
    return image_utils.to_rgb(im)


def from_base64(text, name: str) -> bytes:
  """base64 (optionally a `data:...;base64,` URL) -> bytes."""
  if not isinstance(text, str):
    raise errors.ApiError("bad_request", f"{name}: expected a base64 string,"
                          f" got {type(text).__name__}")
  if text.startswith("data:") and "," in text:
    text = text.split(",", 1)[1]
  try:
    return base64.b64decode(text, validate=True)
  except (binascii.Error, ValueError):
    raise errors.ApiError("bad_request",
                          f"{name}: not valid base64") from None
