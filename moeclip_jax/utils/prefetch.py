"""Read ahead: an iterable's items produced by a background thread.

`background(loader, depth)` lets the next batches be read, decoded and
resized (PIL and numpy release the GIL for most of that) while the device
computes the current one. The items, their order and the exceptions are
those of the iterable: an error in the thread is raised in the consumer,
at the item where it happened.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
_DONE = object()


class _Failure:

  def __init__(self, error: BaseException):
    self.error = error


def background(iterable: Iterable[T], depth: int = 2) -> Iterator[T]:
  """Yields `iterable`'s items, keeping up to `depth` produced ahead."""
  if depth <= 0:
    yield from iterable
    return
  items: queue.Queue = queue.Queue(maxsize=depth)
  stop = threading.Event()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        items.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def produce():
    try:
      for item in iterable:
        if not put(item):
          return
    except BaseException as err:  # pylint: disable=broad-except
      put(_Failure(err))
      return
    put(_DONE)

  thread = threading.Thread(target=produce, name="prefetch", daemon=True)
  thread.start()
  try:
    while True:
      item = items.get()
      if item is _DONE:
        return
      if isinstance(item, _Failure):
        raise item.error
      yield item
  finally:
    stop.set()
    thread.join(timeout=5)
