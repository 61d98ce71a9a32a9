"""Rate-limit models the fake providers enforce: a rolling window and a continuously refilled bucket."""

from __future__ import annotations

from collections import deque


class RollingWindow:
    """At most `limit` units in any `window_s` seconds: what was admitted, with its time."""

    def __init__(self, limit: int, window_s: float = 60.0) -> None:
        self.limit, self.window = limit, window_s
        self.entries: deque[list[float]] = deque()   # [at, units]
        self.total = 0.0

    def _expire(self, now: float) -> None:
        while self.entries and self.entries[0][0] <= now - self.window:
            self.total -= self.entries.popleft()[1]

    def wait(self, now: float, units: float) -> float:
        """Seconds until `units` more fit (0: they fit now)."""
        self._expire(now)
        need = self.total + units - self.limit
        if need <= 1e-9:
            return 0.0
        freed = 0.0
        for at, n in self.entries:
            freed += n
            if freed >= need - 1e-9:
                return at + self.window - now
        return self.window

    def take(self, now: float, units: float) -> list[float]:
        entry = [now, float(units)]
        self.entries.append(entry)
        self.total += units
        return entry

    def settle(self, entry: list[float], units: float) -> None:
        """The window holds what was really used, not the estimate."""
        self.total += units - entry[1]
        entry[1] = units

    def remaining(self, now: float) -> float:
        self._expire(now)
        return max(0.0, self.limit - self.total)

    def reset_s(self, now: float) -> float:
        """Until the window is back to its initial state (OpenAI's `x-ratelimit-reset-*`)."""
        self._expire(now)
        return (self.entries[-1][0] + self.window - now) if self.entries else 0.0


class TokenBucket:
    """A bucket of `capacity` refilled continuously at `rate` per second, starting full."""

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate, self.capacity, self.level, self.at = rate, capacity, capacity, now

    def _refill(self, now: float) -> None:
        if now > self.at:
            self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
            self.at = now

    def wait(self, now: float, units: float) -> float:
        self._refill(now)
        return 0.0 if self.level >= units - 1e-9 else (units - self.level) / self.rate

    def take(self, now: float, units: float) -> None:
        self._refill(now)
        self.level -= units

    def give(self, now: float, units: float) -> None:
        """An estimate adjusted at the end of a request: the difference goes back (or is taken)."""
        self._refill(now)
        self.level = min(self.capacity, self.level + units)

    def remaining(self, now: float) -> float:
        self._refill(now)
        return max(0.0, self.level)

    def reset_s(self, now: float) -> float:
        """Until the bucket is full again (Anthropic's `*-reset`)."""
        self._refill(now)
        return max(0.0, (self.capacity - self.level) / self.rate)
