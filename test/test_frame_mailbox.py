"""The one-slot mailbox between the image callback and the worker thread."""

import threading
import time

from leaf_disease_ros.ros.frame_mailbox import LatestMailbox


def test_take_returns_what_was_put():
    box = LatestMailbox()
    assert box.put('a') is False
    assert box.pending
    assert box.take(0.0) == 'a'
    assert not box.pending
    assert (box.put_count, box.taken, box.dropped) == (1, 1, 0)


def test_newest_wins_and_replaced_items_are_counted_as_dropped():
    box = LatestMailbox()
    box.put(1)
    assert box.put(2) is True
    assert box.put(3) is True
    assert box.take(0.0) == 3
    assert box.dropped == 2
    assert box.take(0.0) is None


def test_take_times_out_on_an_empty_mailbox():
    box = LatestMailbox()
    start = time.monotonic()
    assert box.take(0.05) is None
    assert time.monotonic() - start >= 0.04


def test_clear_discards_without_counting_a_drop():
    box = LatestMailbox()
    box.put('frame')
    assert box.clear() is True
    assert box.clear() is False
    assert (box.discarded, box.dropped) == (1, 0)
    assert box.take(0.0) is None


def test_close_wakes_a_waiting_taker_and_refuses_new_items():
    box = LatestMailbox()
    got = []
    taker = threading.Thread(target=lambda: got.append(box.take()))
    taker.start()
    time.sleep(0.05)
    box.close()
    taker.join(2.0)
    assert not taker.is_alive()
    assert got == [None]
    assert box.closed
    assert box.put('late') is False
    assert box.take(0.0) is None


def test_close_discards_the_pending_item():
    box = LatestMailbox()
    box.put('pending')
    box.close()
    assert box.discarded == 1
    assert box.take(0.0) is None


def test_a_slow_consumer_sees_only_newer_items_and_every_item_is_accounted_for():
    box = LatestMailbox()
    seen = []
    done = threading.Event()

    def consume():
        while not (done.is_set() and not box.pending):
            item = box.take(0.01)
            if item is not None:
                seen.append(item)
                time.sleep(0.001)  # slower than the producer

    consumer = threading.Thread(target=consume)
    consumer.start()
    for i in range(2000):
        box.put(i)
    done.set()
    consumer.join(5.0)
    assert not consumer.is_alive()
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    assert seen[-1] == 1999  # the newest frame is always processed
    assert box.dropped > 0
    assert box.put_count == box.taken + box.dropped + box.discarded == 2000


def test_wait_reports_a_pending_item_without_taking_it():
    box: LatestMailbox[int] = LatestMailbox()
    assert not box.wait(0.01)
    threading.Timer(0.05, box.put, args=(7,)).start()
    assert box.wait(30.0) and box.pending and box.taken == 0
    assert box.take(0.0) == 7
    box.close()
    assert not box.wait(30.0)  # closed: returns at once
