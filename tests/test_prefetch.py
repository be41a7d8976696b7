"""The read-ahead thread behind the source's pages and each slice of a sliced read: order, errors handed to
the consumer, and a close that stops a reader blocked on a full queue and closes its iterator."""

from __future__ import annotations

import threading

import pytest

from deeplog_siem.prefetch import Prefetch


def test_items_come_in_order_then_none():
    p = Prefetch(iter(range(1, 50)), depth=3)
    assert list(p) == list(range(1, 50))
    assert p.next() is None
    p.close()


def test_an_error_of_the_iterator_is_raised_to_the_consumer_after_the_items_before_it():
    def items():
        yield 1
        yield 2
        raise ValueError("page 3 failed")

    p = Prefetch(items(), depth=1)
    assert p.next() == 1 and p.next() == 2
    with pytest.raises(ValueError, match="page 3 failed"):
        p.next()
    assert p.next() is None  # finished: no wait on a queue nothing will fill again
    p.close()


def test_close_stops_a_reader_blocked_on_a_full_queue_and_closes_its_iterator():
    closed = threading.Event()

    def endless():
        try:
            n = 0
            while True:
                n += 1
                yield n
        finally:
            closed.set()

    p = Prefetch(endless(), depth=2)
    assert p.next() == 1
    p.close()
    assert closed.is_set()
    assert not p._thread.is_alive()
