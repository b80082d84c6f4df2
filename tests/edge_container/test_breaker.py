from edge_container.breaker import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_only() -> None:
    states: list[str] = []
    breaker = CircuitBreaker(failures=3, reset_s=10, clock=Clock(), on_change=states.append)
    breaker.failure()
    breaker.failure()
    breaker.success()  # a success in between resets the count
    breaker.failure()
    breaker.failure()
    assert breaker.state == "closed" and breaker.allow()
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow()
    assert states == ["open"]


def test_half_open_lets_one_probe_through_and_closes_on_success() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=1, reset_s=10, clock=clock)
    breaker.failure()
    clock.now += 9.9
    assert not breaker.allow()
    clock.now += 0.2
    assert breaker.allow() and breaker.state == "half_open"
    assert not breaker.allow()  # a second caller waits for the probe's verdict
    breaker.success()
    assert breaker.state == "closed" and breaker.allow() and breaker.allow()


def test_a_failed_probe_reopens_for_another_full_wait() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=1, reset_s=10, clock=clock)
    breaker.failure()
    clock.now += 10
    assert breaker.allow()
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow()
    clock.now += 10
    assert breaker.allow()


def test_an_abandoned_probe_frees_the_slot() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=1, reset_s=1, clock=clock)
    breaker.failure()
    clock.now += 1
    assert breaker.allow()
    breaker.release()
    assert breaker.allow()
