"""One study-level progress line between Tune's tables: phase, protocol k of n, runs finished of
planned, elapsed time and an estimate of what is left.

The estimate is the wall time per finished run of each kind in this session (teacher runs and
student trials cost very differently) times the runs of that kind still to go; runs finished
before a --resume count as done but not towards the rates.
"""

from __future__ import annotations

import threading
import time

from ray.tune import Callback

RUN_KINDS = ("teacher", "trial")  # what the study runs: teacher runs and student trials


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class StudyProgress:
    """Counts of planned and finished runs per kind ("teacher", "trial"), and the line to print."""

    def __init__(
        self, protocols: list[str], planned: dict[str, int], clock=time.monotonic, print_fn=print
    ) -> None:
        self.protocols, self.planned = (
            list(protocols),
            {k: int(planned.get(k, 0)) for k in RUN_KINDS},
        )
        self.done = {k: 0 for k in RUN_KINDS}
        self._session = {k: 0 for k in RUN_KINDS}  # finished in this session: what the rates use
        self._spent = {k: 0.0 for k in RUN_KINDS}
        self._clock, self._print = clock, print_fn
        self._start = self._mark = clock()
        self._kind_started = {k: None for k in RUN_KINDS}
        self.phase, self.protocol = "teachers", None
        self.waiting = (
            ""  # trials whose Train workers wait for resources (cluster.ReservationWatch)
        )
        self._lock = threading.Lock()  # teachers finish on a thread pool

    def already_done(self, kind: str, count: int) -> None:
        """Runs finished before this session (on --resume) or found cached: done, but not timed."""
        with self._lock:
            self.done[kind] += count

    def set_phase(self, phase: str, protocol: str | None = None) -> None:
        with self._lock:
            self.phase, self.protocol = phase, protocol
            kind = "teacher" if phase == "teachers" else "trial"
            if self._kind_started[kind] is None:
                self._kind_started[kind] = self._clock()
        self.show()

    def finished(self, kind: str) -> None:
        with self._lock:
            now = self._clock()
            self.done[kind] += 1
            self._session[kind] += 1
            started = (
                self._kind_started[kind] if self._kind_started[kind] is not None else self._start
            )
            self._spent[kind] = now - started
        self.show()

    def set_waiting(self, text: str) -> None:
        """What the study's running trials wait for ("" when none waits); shows the line."""
        with self._lock:
            self.waiting = text
        self.show()

    def left_seconds(self) -> float | None:
        """Estimated seconds left, or None while a kind with runs to go has no finished run to
        time."""
        left = 0.0
        for kind in RUN_KINDS:
            remaining = max(0, self.planned[kind] - self.done[kind])
            if not remaining:
                continue
            rate = self._spent[kind] / self._session[kind] if self._session[kind] else None
            if rate is None and kind == "trial" and self._session["teacher"]:
                # Before the first trial ends: a student trial costs about a third of a teacher
                # run.
                rate = self._spent["teacher"] / self._session["teacher"] / 3
            if rate is None:
                return None
            left += remaining * rate
        return left

    def line(self) -> str:
        where = ""
        if self.protocol is not None and self.protocol in self.protocols:
            where = (
                f", protocol {self.protocol} ({self.protocols.index(self.protocol) + 1} of "
                f"{len(self.protocols)})"
            )
        left = self.left_seconds()
        estimate = "unknown yet" if left is None else f"~{format_duration(left)} (estimate)"
        return (
            f"== study: {self.phase}{where} | teachers "
            f"{self.done['teacher']}/{self.planned['teacher']}, trials "
            f"{self.done['trial']}/{self.planned['trial']} finished | elapsed "
            f"{format_duration(self._clock() - self._start)} | left {estimate}"
            + (f" | {self.waiting}" if self.waiting else "")
            + " =="
        )

    def show(self) -> None:
        self._print(self.line(), flush=True)


# Tune pickles a run's callbacks into its experiment state and a restored run (--resume) gets the
# pickled copies back: the callback therefore holds only a key, and the driver's live
# StudyProgress is looked up here when a trial ends.
_LIVE: dict[str, StudyProgress] = {}


def register(key: str, progress: StudyProgress) -> None:
    _LIVE[key] = progress


def say_waiting(key: str, text: str) -> None:
    """What the study `key`'s trials wait for, into its progress line (printed when the study
    has none registered, as in a benchmark)."""
    progress = _LIVE.get(key)
    if progress is not None:
        progress.set_waiting(text)
    elif text:
        print(f"== {text} ==", flush=True)


class ProgressCallback(Callback):
    """Tune callback: one progress line per finished (or failed) trial of the study `key`."""

    def __init__(self, key: str) -> None:
        self.key = key

    def _finished(self) -> None:
        progress = _LIVE.get(self.key)
        if progress is not None:
            progress.finished("trial")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finished()

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finished()
