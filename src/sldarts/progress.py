"""Progress for long work: a bar on a terminal, plain periodic lines otherwise (logs, clusters)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO


class Progress:
    """Shows epoch/step/loss/accuracy; every message also goes to ``log.txt`` in the run directory."""

    def __init__(self, mode: str = "auto", every: int = 20, log_file: Path | None = None,
                 stream: TextIO | None = None, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        self.mode = mode if enabled else "none"
        self.every = every
        self.log_file = log_file if enabled else None
        self._bar = None
        self._t0 = time.time()

    def message(self, text: str) -> None:
        if self.mode != "none":
            if self._bar is not None:
                self._bar.write(text, file=self.stream)
            else:
                print(text, file=self.stream, flush=True)
        if self.log_file is not None:
            with open(self.log_file, "a") as f:
                f.write(text + "\n")

    def start_epoch(self, epoch: int, epochs: int, steps: int, start: int = 0) -> None:
        self._epoch, self._epochs, self._steps = epoch, epochs, steps
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=steps, initial=start, desc=f"epoch {epoch}/{epochs}", file=self.stream,
                             leave=False, dynamic_ncols=True)

    def wants(self, step: int) -> bool:
        """Whether step (1-based) is a point where the caller should read its numbers (a host sync)."""
        return step % self.every == 0 or step == self._steps

    def update(self, step: int, loss: float, acc: float) -> None:
        if self._bar is not None:
            self._bar.n = step
            self._bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.1%}", refresh=True)
        elif self.mode == "lines":
            print(f"epoch {self._epoch}/{self._epochs} step {step}/{self._steps} loss {loss:.4f} "
                  f"acc {acc:.2%} [{time.time() - self._t0:.0f}s]", file=self.stream, flush=True)

    def end_epoch(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
