"""Request bodies read in memory (never spooled to disk): multipart form
data or JSON, bounded by a byte limit."""

from __future__ import annotations

import json

from moeclip_jax.serve import errors


async def read_body(request, limit: int) -> bytes:
  """The whole body; 413 once it passes `limit` bytes."""
  chunks, size = [], 0
  async for chunk in request.stream():
    size += len(chunk)
    if size > limit:
      raise errors.ApiError("too_many_bytes", f"request body over {limit} "
                            "bytes (--max-bytes x --max-images)")
    chunks.append(chunk)
  return b"".join(chunks)


def parse_multipart(body: bytes, content_type: str
                    ) -> tuple[dict[str, str], list[tuple[str, str, bytes]]]:
  """(text fields, [(field, filename, bytes)]) of a multipart body."""
  from python_multipart import multipart  # pylint: disable=g-import-not-at-top
  _, params = multipart.parse_options_header(content_type)
  boundary = params.get(b"boundary")
  if not boundary:
    raise errors.ApiError("bad_request", "multipart body without a boundary")
  parts, state = [], {}

  def begin():
    state.update(headers={}, field=b"", value=b"", data=[])

  def header_field(data, start, end):
    state["field"] += data[start:end]

  def header_value(data, start, end):
    state["value"] += data[start:end]

  def header_end():
    state["headers"][state["field"].lower()] = state["value"]
    state["field"], state["value"] = b"", b""

  def part_data(data, start, end):
    state["data"].append(data[start:end])

  def part_end():
    parts.append((state["headers"], b"".join(state["data"])))

  parser = multipart.MultipartParser(boundary, {
      "on_part_begin": begin, "on_header_field": header_field,
      "on_header_value": header_value, "on_header_end": header_end,
      "on_part_data": part_data, "on_part_end": part_end})
  try:
    parser.write(body)
    parser.finalize()
  except Exception as err:  # pylint: disable=broad-except
    raise errors.ApiError("bad_request",
                          f"malformed multipart body ({err})") from None
  fields, files = {}, []
  for headers, data in parts:
    _, disp = multipart.parse_options_header(
        headers.get(b"content-disposition", b""))
    name = disp.get(b"name", b"").decode("utf-8", "replace")
    if b"filename" in disp:
      files.append((name, disp[b"filename"].decode("utf-8", "replace"), data))
    else:
      fields[name] = data.decode("utf-8", "replace")
  return fields, files


def parse_json(body: bytes) -> dict:
  try:
    data = json.loads(body)
  except (ValueError, UnicodeDecodeError) as err:
    raise errors.ApiError("bad_request", f"body is not JSON ({err})"
                          ) from None
  if not isinstance(data, dict):
    raise errors.ApiError("bad_request", "JSON body must be an object")
  return data
