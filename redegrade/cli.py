"""Shared plumbing for click CLIs: logging, and the one error path every CLI uses.

Every user error — click's own usage errors included — is one line ``error: …`` on stderr with exit
code 2, and nothing is written. CLIs use :class:`OneLineCommand` / :class:`OneLineGroup` for click's
errors and :func:`user_errors` around their callbacks for ours. This module imports no torch.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import sys
from collections.abc import Callable, Iterator
from typing import TypeVar

import click

from redegrade.errors import RedegradeError

F = TypeVar("F", bound=Callable)

EXIT_USER_ERROR = 2
SEED = click.IntRange(-(2 ** 63), 2 ** 64 - 1)
"""A seed: any integer ``torch.Generator.manual_seed`` takes."""


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s: %(message)s",
                        stream=sys.stderr, force=True)


def one_line(text: object) -> str:
    """``text`` on one line (newlines and runs of spaces collapsed)."""
    return " ".join(str(text).split())


def fail(message: object) -> None:
    """Print ``error: message`` as one line on stderr and exit with code 2."""
    click.echo(f"error: {one_line(message)}", err=True)
    sys.exit(EXIT_USER_ERROR)


def _out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or (
        isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text))


def user_errors(fn: F) -> F:
    """Turn :class:`RedegradeError` (and file-system or out-of-memory failures) into one line on stderr
    and exit code 2 (click's usage-error code)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RedegradeError as exc:
            fail(exc)
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            fail(f"{(exc.strerror or str(exc)).lower()}{where}")
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is ours to word; the rest re-raises
            if not _out_of_memory(exc):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            fail(f"ran out of memory ({first[:200]}); use a smaller image (for transfer: --size) or a device "
                 "with more memory")

    return wrapper  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------ click's errors
class OneLineUsageError(click.UsageError):
    """A click usage error shown as one ``error: …`` line (no usage block, no hint line)."""

    exit_code = EXIT_USER_ERROR

    def show(self, file=None) -> None:
        click.echo(f"error: {one_line(self.format_message())}", err=True)


@contextlib.contextmanager
def _one_line(ctx: click.Context | None = None) -> Iterator[None]:
    try:
        yield
    except OneLineUsageError:
        raise
    except click.exceptions.NoArgsIsHelpError as exc:
        cmd = exc.ctx.command if exc.ctx is not None else None
        names = ", ".join(cmd.list_commands(exc.ctx)) if isinstance(cmd, click.Group) else ""
        raise OneLineUsageError(f"missing command{f' (one of {names})' if names else ''}; see --help",
                                exc.ctx) from None
    except click.ClickException as exc:
        raise OneLineUsageError(exc.format_message(), getattr(exc, "ctx", ctx)) from None


class _OneLine:
    """Mixin for click commands and groups: usage errors become one line on stderr (exit 2)."""

    def make_context(self, info_name, args, parent=None, **extra):
        with _one_line():
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx):
        with _one_line(ctx):
            return super().invoke(ctx)


class OneLineCommand(_OneLine, click.Command):
    """A click command whose usage errors are one line on stderr (exit 2), like our own errors."""


class OneLineGroup(_OneLine, click.Group):
    """A click group with one-line usage errors; its subcommands are :class:`OneLineCommand` by default."""

    command_class = OneLineCommand


class FiniteFloat(click.ParamType):
    """A float that must be finite (``nan`` and ``inf`` are refused)."""

    name = "number"

    def convert(self, value, param, ctx):
        if isinstance(value, float) and math.isfinite(value):
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


FINITE = FiniteFloat()
