"""The progress bar of ``fit``: one line per epoch on stderr (tqdm when installed; its
notebook widget in Jupyter)."""
import sys
import time


class Progress:
    """Steps of an epoch done so far and the last loss; silent when disabled.

    Used as a context manager: the bar is cleared when the epoch ends or fails."""

    def __init__(self, enabled, total, desc):
        self.enabled, self.total, self.desc = enabled, total, desc
        self.done, self.last = 0, 0.0
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm     # the notebook widget in Jupyter
                self.bar = tqdm(total=total, desc=desc, unit="step", leave=False)
            except ImportError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, steps, loss):
        """``steps`` more steps done; ``loss`` the mean loss of the latest ones."""
        if not self.enabled or steps == 0:
            return
        self.done += steps
        if self.bar is not None:
            self.bar.update(steps)
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            return
        now = time.perf_counter()
        if now - self.last > 0.25 or self.done == self.total:
            self.last = now
            filled = int(30 * self.done / self.total)
            sys.stderr.write(f"\r{self.desc} [{'#' * filled}{'.' * (30 - filled)}] "
                             f"{self.done}/{self.total} loss {loss:.4f}")
            sys.stderr.flush()

    def close(self):
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            sys.stderr.write("\r" + " " * (len(self.desc) + 60) + "\r")
            sys.stderr.flush()
