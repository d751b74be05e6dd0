"""Shared plumbing for click CLIs: logging setup and the one-line error contract (exit code 2)."""
from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import TypeVar

import click

from redegrade.errors import RedegradeError

F = TypeVar("F", bound=Callable)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s: %(message)s",
                        stream=sys.stderr, force=True)


def user_errors(fn: F) -> F:
    """Turn :class:`RedegradeError` into one line on stderr and exit code 2 (click's usage-error code)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RedegradeError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]
