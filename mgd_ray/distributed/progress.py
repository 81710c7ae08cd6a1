"""One study-level progress line: phase, protocol k of n, runs finished of planned, the best
final mIoU of the protocol so far, elapsed time and an estimate of what is left. In a terminal it
is one live line (console.py); elsewhere it is printed as a line at each event.

The estimate is the wall time per finished run of each kind in this session (teacher runs and
student trials cost very differently) times the runs of that kind still to go; runs finished
before a --resume count as done but not towards the rates.
"""

from __future__ import annotations

import contextlib
import threading
import time

from ray.tune import Callback

from ..schema import finite_or_none, reached_the_end
from .spec import from_tune

RUN_KINDS = ("teacher", "trial")  # what the study runs: teacher runs and student trials


# console.study_console's live line, when the study's console has one (show_status draws it)
_STATUS_LINE: list = []


def show_status(text: str, flush: bool = True) -> None:
    """Show the progress line: on the live line when there is one, else printed."""
    if _STATUS_LINE:
        _STATUS_LINE[-1](text)
    else:
        print(text, flush=flush)


@contextlib.contextmanager
def live_status(show):
    """Within it, progress lines go to `show` (a console's live line) unless it is None."""
    if show is not None:
        _STATUS_LINE.append(show)
    try:
        yield
    finally:
        if show is not None:
            _STATUS_LINE.remove(show)


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class StudyProgress:
    """Counts of planned and finished runs per kind ("teacher", "trial"), and the line to print."""

    def __init__(
        self,
        protocols: list[str],
        planned: dict[str, int],
        clock=time.monotonic,
        print_fn=show_status,
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
        self.best: dict[str, float] = {}  # per protocol: the best final mIoU of a completed trial
        # trials whose Train workers wait for resources (reservations.ReservationWatch)
        self.waiting = ""
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

    def scored(self, miou: float) -> None:
        """A trial of the current protocol completed with final mIoU `miou`."""
        with self._lock:
            if self.protocol is not None:
                self.best[self.protocol] = max(miou, self.best.get(self.protocol, miou))

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
            f"{self.done['trial']}/{self.planned['trial']} finished"
            + (
                f" | best mIoU {self.best[self.protocol]:.4f}"
                if self.protocol in self.best
                else ""
            )
            + " | elapsed "
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


def latest_line() -> str | None:
    """The progress line of the study registered last (None when none is): the live line's."""
    return next(reversed(_LIVE.values())).line() if _LIVE else None


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
        progress, result = _LIVE.get(self.key), trial.last_result or {}
        miou = finite_or_none(result.get("miou"))
        if progress is not None and miou is not None and _ran_to_the_end(trial.config, result):
            progress.scored(miou)
        self._finished()

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finished()


def _ran_to_the_end(config, result) -> bool:
    """Whether a trial reported from its last iteration (an early-stopped one's score is not a
    final mIoU)."""
    try:
        return reached_the_end(result.get("iteration"), from_tune(config).distill.iterations)
    except (KeyError, TypeError, ValueError):
        return False
