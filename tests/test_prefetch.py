"""utils/prefetch.background: same items, order and errors as the
iterable, read ahead by a thread that stops when the consumer does."""

import threading
import time

import pytest

from moeclip_jax.utils import prefetch


def test_same_items_in_order():
  assert list(prefetch.background(iter(range(50)), depth=3)) == list(
      range(50))
  assert list(prefetch.background([], depth=2)) == []
  assert list(prefetch.background(range(4), depth=0)) == [0, 1, 2, 3]


def test_reads_ahead_while_the_consumer_works():
  produced = []

  def slow_source():
    for i in range(4):
      produced.append(i)
      yield i

  it = prefetch.background(slow_source(), depth=2)
  assert next(it) == 0
  deadline = time.time() + 5
  while len(produced) < 3 and time.time() < deadline:
    time.sleep(0.01)
  assert produced[:3] == [0, 1, 2]  # items 1 and 2 are ready already
  assert list(it) == [1, 2, 3]


def test_an_error_is_raised_at_its_item():
  def broken():
    yield 1
    yield 2
    raise OSError("bad.png: truncated")

  it = prefetch.background(broken(), depth=2)
  assert next(it) == 1 and next(it) == 2
  with pytest.raises(OSError, match="bad.png: truncated"):
    next(it)


def test_closing_early_stops_the_thread():
  it = prefetch.background(iter(range(10**9)), depth=2)
  assert next(it) == 0
  it.close()
  deadline = time.time() + 5
  while any(t.name == "prefetch" for t in threading.enumerate()):
    assert time.time() < deadline, "prefetch thread still running"
    time.sleep(0.01)
