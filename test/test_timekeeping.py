"""Rate limits and backward time jumps on header stamps."""

import pytest

from leaf_disease_ros.ros.timekeeping import BackwardJumpDetector, RateLimiter

MS = 1_000_000
S = 1_000_000_000


def test_rate_limiter_lets_through_at_most_rate_hz():
    limiter = RateLimiter(2.0)
    stamps_ms = [0, 100, 490, 500, 990, 1000, 1499, 1500]
    allowed = [t for t in stamps_ms if limiter.allow(t * MS)]
    assert allowed == [0, 500, 1000, 1500]
    assert limiter.rate_hz == pytest.approx(2.0)


def test_rate_zero_lets_nothing_through_and_a_live_change_takes_effect():
    limiter = RateLimiter(0.0)
    assert not limiter.allow(0)
    assert limiter.rate_hz == 0.0
    limiter.set_rate(10.0)
    assert limiter.allow(S)
    assert not limiter.allow(S + 50 * MS)
    assert limiter.allow(S + 100 * MS)
    limiter.set_rate(0.0)
    assert not limiter.allow(10 * S)


def test_stamps_going_back_restart_the_limiter_instead_of_silencing_it():
    limiter = RateLimiter(1.0)
    assert limiter.allow(100 * S)
    assert limiter.allow(3 * S)  # the bag looped
    assert not limiter.allow(3 * S + 500 * MS)
    limiter.reset()
    assert limiter.allow(3 * S + 600 * MS)


def test_backward_jump_is_reported_with_its_size_and_starts_a_new_timeline():
    detector = BackwardJumpDetector(3.0)
    assert detector.update(10 * S) is None
    assert detector.update(11 * S) is None
    assert detector.update(9 * S) is None  # 2 s reordering: not a jump
    assert detector.update(5 * S) == pytest.approx(6.0)
    assert detector.jumps == 1
    assert detector.newest_ns == 5 * S
    assert detector.update(6 * S) is None
    assert detector.update(int(2.5 * S)) == pytest.approx(3.5)
    assert detector.jumps == 2


def test_jump_threshold_must_be_positive():
    with pytest.raises(ValueError):
        BackwardJumpDetector(0.0)


def test_rate_limiter_is_safe_across_threads():
    # the worker asks, a parameter change sets the rate and a time jump resets, each
    # from its own thread: of many threads asking at one stamp, exactly one goes through
    import threading

    for _ in range(20):
        limiter = RateLimiter(1.0)
        allowed = []
        start = threading.Barrier(5)

        def ask() -> None:
            start.wait()
            for _ in range(200):
                if limiter.allow(10 * S):
                    allowed.append(1)

        def change() -> None:
            start.wait()
            for _ in range(200):
                limiter.set_rate(1.0)

        threads = [threading.Thread(target=ask) for _ in range(4)]
        threads.append(threading.Thread(target=change))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(allowed) == 1
