"""What every lab command shares: its argument parser's look (the module docstring as
the description, each option's default shown) and one progress convention: tqdm bars
for loops, ``logging`` for everything said, written through tqdm so that log lines do
not break a bar."""
from __future__ import annotations

import argparse
import logging
import sys

from tqdm import tqdm


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring as written, and "(default: ...)" after every option's help."""


def parser(doc: str | None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=doc, formatter_class=_HelpFormatter)


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:          # noqa: BLE001  (logging's own contract: never raise)
            self.handleError(record)


def setup_logging(quiet: bool = False) -> None:
    """INFO (WARNING when ``quiet``, e.g. DDP ranks but the first) to stderr, where the
    bars are, through tqdm. Idempotent."""
    root = logging.getLogger()
    if not any(isinstance(h, _TqdmHandler) for h in root.handlers):
        handler = _TqdmHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.WARNING if quiet else logging.INFO)
