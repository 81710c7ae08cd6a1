"""What the study's console shows: Ray's known-harmless lines filtered out, everything else kept,
and the study's progress as one live line at the bottom of a terminal.

The filter wraps the driver's sys.stdout and sys.stderr, where Ray prints what its workers and
actors log (`log_to_driver`); every line also stays in Ray's own log files (the session's
logs/ folder: worker-*.out / .err, one pair per worker and actor), so nothing is lost. The live
line is a tqdm status line (tqdm is already installed, as Optuna's dependency; rich is not); in a
log file or a pipe (no terminal) the progress is printed as lines instead, one per event.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from typing import Callable, Iterator, TextIO

# (pattern, why it is harmless). A line matching one is dropped from the console; every other
# line, an unknown error included, is kept.
HARMLESS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(
            r"core_worker\.cc:\d+: Actor with class name: 'PreemptionWatcher' and ID: "
            r"'[0-9a-f]+' has constructor arguments in the object store and max_restarts > 0"
        ),
        # Ray Train V2's controller starts a PreemptionWatcher actor at every worker-group start
        # (train/v2/_internal/callbacks/preemption_callback.py: max_restarts=-1, its worker
        # handles passed by reference); Ray's core worker then warns at error level that a
        # restart could not rebuild it (ray-project/ray#53727). The watcher only polls for node
        # drains, and is killed with its worker group: one line per Train run, nothing wrong.
        "Ray Train's PreemptionWatcher restart notice (one per Train run)",
    ),
)


def is_harmless(line: str) -> bool:
    """Whether `line` is one of Ray's known-harmless console lines (HARMLESS)."""
    return any(pattern.search(line) for pattern, _ in HARMLESS)


class LiveLine:
    """One status line at the bottom of a terminal (tqdm); other output is written above it."""

    def __init__(self, stream: TextIO) -> None:
        from tqdm import tqdm

        try:
            width = os.get_terminal_size(stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            width = 0
        # a terminal that says it has no width (some ptys) would cut the line to nothing
        sized = dict(dynamic_ncols=True) if width > 0 else dict(ncols=160, nrows=24)
        self._bar = tqdm(total=0, bar_format="{desc}", file=stream, **sized)
        self._lock = threading.RLock()

    def show(self, text: str) -> None:
        with self._lock:
            self._bar.set_description_str(text, refresh=True)

    @contextlib.contextmanager
    def above(self) -> Iterator[None]:
        """Write a line above the live line: cleared first, drawn again after."""
        with self._lock:
            self._bar.clear()
            try:
                yield
            finally:
                self._bar.refresh()

    def close(self) -> None:
        with self._lock:
            self._bar.close()


class FilteredStream:
    """A text stream that passes its complete lines on to `target`, except the known-harmless
    ones (counted in `hidden`), written above `live` when there is a live line."""

    def __init__(self, target: TextIO, live: LiveLine | None = None) -> None:
        self.target, self.live, self.hidden = target, live, 0
        self._partial = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            *lines, self._partial = (self._partial + text).split("\n")
            kept = []
            for line in lines:
                if is_harmless(line):
                    self.hidden += 1
                else:
                    kept.append(line + "\n")
            if kept:
                self._emit("".join(kept))
        return len(text)

    def _emit(self, text: str) -> None:
        with self.live.above() if self.live is not None else contextlib.nullcontext():
            self.target.write(text)
            self.target.flush()

    def flush(self) -> None:
        self.target.flush()

    def close_line(self) -> None:
        """Write out a last line that had no newline."""
        with self._lock:
            if self._partial and not is_harmless(self._partial):
                self._emit(self._partial)
            self._partial = ""

    def __getattr__(self, name: str):  # isatty, fileno, encoding...: the target's
        return getattr(self.target, name)


@contextlib.contextmanager
def study_console(
    status: Callable[[], str | None] | None = None,
    live: bool | None = None,
    tick_s: float = 1.0,
    restore: bool = True,
) -> Iterator[Callable[[str], None] | None]:
    """Filter sys.stdout and sys.stderr for the duration; yield the function that shows a
    progress line: a live line (redrawn every `tick_s` from `status()`, so that the elapsed
    time moves) when stderr is a terminal (`live` None) or `live` is True, else None (print the
    line). Ends with how many lines were hidden; `restore` False leaves the filter on the streams
    (an entry script's last lines, printed by Ray at exit, are then filtered too)."""
    out, err = sys.stdout, sys.stderr
    if live is None:
        live = bool(getattr(err, "isatty", lambda: False)())
    line = LiveLine(err) if live else None
    sys.stdout, sys.stderr = FilteredStream(out, line), FilteredStream(err, line)
    stop = threading.Event()
    if line is not None and status is not None:

        def tick() -> None:
            while not stop.wait(tick_s):
                text = status()
                if text:
                    line.show(text)

        threading.Thread(target=tick, name="study-progress", daemon=True).start()
    try:
        yield line.show if line is not None else None
    finally:
        stop.set()
        filtered = (sys.stdout, sys.stderr)
        for stream in filtered:
            if isinstance(stream, FilteredStream):
                stream.close_line()
        if line is not None:
            line.close()
        if restore:
            sys.stdout, sys.stderr = out, err
        else:  # Ray prints its workers' last lines as the process exits: still filtered
            for stream in filtered:
                if isinstance(stream, FilteredStream):
                    stream.live = None
        hidden = sum(s.hidden for s in filtered if isinstance(s, FilteredStream))
        if hidden:
            print(
                f"({hidden} known-harmless Ray line(s) hidden from the console: "
                "Ray's session logs keep them)",
                flush=True,
            )
