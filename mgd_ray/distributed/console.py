"""What the study's console shows: the known-harmless lines of Ray, Tune and Optuna filtered out,
everything else kept, and the study's progress as one live line at the bottom of a terminal.

The filter wraps the driver's sys.stdout and sys.stderr, where Ray prints what its workers and
actors log (`log_to_driver`); their lines also stay in Ray's own log files (the session's logs/
folder: worker-*.out / .err, one pair per worker and actor). The driver's own hidden lines (Tune's
header and run folder, Optuna's notice) say nothing the study's lines and records do not. The live
line is a tqdm status line (tqdm is already installed, as Optuna's dependency; rich is not); in a
log file or a pipe (no terminal) the progress is printed as lines instead, one per event.
"""

from __future__ import annotations

import contextlib
import logging
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
    (
        re.compile(
            r"^(?:[╭├╰]─+[╮┤╯]|│ (?:Configuration for experiment|Search algorithm|Scheduler|"
            r"Number of trials) .*│)$"
        ),
        # Tune's header of every Tuner.fit (tune/experimental/output.py experiment_started), also
        # at verbose=0: the study's phase line says which search or ablation runs, and how many
        # trials.
        "Tune's experiment header box",
    ),
    (
        re.compile(
            r"^(?:View detailed results here: |To visualize your results with TensorBoard, run: )"
            r"|INFO tune\.py:\d+ -- Wrote the latest version of all result files and experiment "
            r"state to "
        ),
        # Tune's run folder, printed as every Tuner.fit starts and ends: the study says where its
        # Ray storage is when it starts, and its trial records are in OUTPUT_DIR/trials.
        "Tune's where-the-results-are lines",
    ),
    (
        re.compile(r"^\[I [\d-]+ [\d:,]+\] A new study created in RDB with name: "),
        # Optuna's INFO log as Tune's OptunaSearch creates each protocol's study in the study's
        # own Optuna storage (sqlite:///OUTPUT_DIR/optuna.db unless --optuna-storage).
        "Optuna's new-study notice",
    ),
)
# A traceback a Tune trial's actor prints as Ray ends it with SIGTERM after its trial has finished
# (its record already says how it ended): Ray's sigterm_handler raises SystemExit inside a WeakSet
# callback, which Python ignores ("Exception ignored in"), so nothing failed. Its lines all carry
# one actor's "(name pid=N)" prefix; a block that does not end in "SystemExit: 1" within
# EXIT_TRACEBACK_LINES lines is kept whole.
EXIT_TRACEBACK_START = re.compile(
    r"^(?P<prefix>(?:\x1b\[[\d;]*m)?\([\w.]+ pid=\d+\)(?:\x1b\[[\d;]*m)? )Exception ignored in: "
    r"<function WeakSet\.__init__\.<locals>\._remove at 0x[0-9a-f]+>$"
)
EXIT_TRACEBACK_LINES = 12


def is_harmless(line: str) -> bool:
    """Whether `line` is one of the known-harmless console lines (HARMLESS)."""
    return any(pattern.search(line) for pattern, _ in HARMLESS)


class ExitTraceback:
    """The lines of one possible SIGTERM-at-exit traceback (EXIT_TRACEBACK_START), held back until
    it is known whether the block is that traceback."""

    def __init__(self, first: str, prefix: str) -> None:
        self.lines, self.prefix = [first], prefix

    def take(self, line: str) -> str | None:
        """Add `line`: "hide" when the block ended as the harmless traceback, "keep" when it
        turned out to be something else (then `line` is not part of it), None while open."""
        if not line.startswith(self.prefix) or len(self.lines) >= EXIT_TRACEBACK_LINES:
            return "keep"
        self.lines.append(line)
        return "hide" if line[len(self.prefix) :].strip() == "SystemExit: 1" else None


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
        self._held: ExitTraceback | None = None
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            *lines, self._partial = (self._partial + text).split("\n")
            kept: list[str] = []
            for line in lines:
                self._filter(line, kept)
            if kept:
                self._emit("".join(kept))
        return len(text)

    def _filter(self, line: str, kept: list[str]) -> None:
        if self._held is not None:
            verdict = self._held.take(line)
            if verdict is None:
                return
            held, self._held = self._held, None
            if verdict == "hide":
                self.hidden += len(held.lines)
                return
            kept.extend(held_line + "\n" for held_line in held.lines)
        if not line.strip():
            return  # dropped, uncounted: Tune prints them around the header and folder lines
        start = EXIT_TRACEBACK_START.match(line)
        if start:
            self._held = ExitTraceback(line, start["prefix"])
        elif is_harmless(line):
            self.hidden += 1
        else:
            kept.append(line + "\n")

    def _emit(self, text: str) -> None:
        with self.live.above() if self.live is not None else contextlib.nullcontext():
            self.target.write(text)
            self.target.flush()

    def flush(self) -> None:
        self.target.flush()

    def close_line(self) -> None:
        """Write out what is held back: a block not yet known to be harmless, and a last line
        that had no newline."""
        with self._lock:
            kept = [line + "\n" for line in self._held.lines] if self._held is not None else []
            self._held = None
            if self._partial and not is_harmless(self._partial):
                kept.append(self._partial)
            self._partial = ""
            if kept:
                self._emit("".join(kept))

    def __getattr__(self, name: str):  # isatty, fileno, encoding...: the target's
        return getattr(self.target, name)


def redirect_log_handlers(
    streams: dict[int, TextIO],
) -> list[tuple[logging.StreamHandler, TextIO]]:
    """Point every logging.StreamHandler writing to one of the streams `streams` names (by id) at
    its replacement; return (handler, old stream) pairs to undo it."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    changed = []
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            # subclasses too: Ray's PlainRayHandler keeps the stderr it was made with
            if isinstance(handler, logging.StreamHandler) and id(handler.stream) in streams:
                changed.append((handler, handler.setStream(streams[id(handler.stream)])))
    return changed


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
    # Ray's and Optuna's loggers hold the stream they were made with: pointed at the filter too
    handlers = redirect_log_handlers({id(out): sys.stdout, id(err): sys.stderr})
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
            for handler, stream in handlers:
                handler.setStream(stream)
        else:  # Ray prints its workers' last lines as the process exits: still filtered
            for stream in filtered:
                if isinstance(stream, FilteredStream):
                    stream.live = None
        hidden = sum(s.hidden for s in filtered if isinstance(s, FilteredStream))
        if hidden:
            print(
                f"({hidden} known-harmless line(s) of Ray, Tune and Optuna hidden from the "
                "console: mgd_ray/distributed/console.py lists them)",
                flush=True,
            )
