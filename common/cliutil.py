"""What every `phm-*` click command shares: failures as one `Error: …` line on stderr.

    @click.command(cls=OneLineCommand)

Click prints a usage dump before a usage error (bad option value, missing argument); the project's
rule is one clear line for every failure, so usage errors are re-raised as a plain ClickException.
Ctrl-C and SIGTERM unwind the command like an exception (so atomic writes drop their temporaries
and locks are released) and end in one line with the shell's exit codes, 130 and 143.
"""

from __future__ import annotations

import math
import signal

import click

__all__ = ["FiniteFloatRange", "OneLineCommand"]


class Terminated(BaseException):
    """SIGTERM, raised where the process is, so cleanup runs as for Ctrl-C."""


def _terminate(signum, frame):
    raise Terminated()


class OneLineCommand(click.Command):
    """Usage errors as one `Error: …` line (no usage dump), like every other failure."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            raise click.ClickException(e.format_message()) from None

    def invoke(self, ctx):
        previous = signal.signal(signal.SIGTERM, _terminate)
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("Error: interrupted (Ctrl-C)", err=True)
            ctx.exit(130)
        except Terminated:
            click.echo("Error: terminated (SIGTERM)", err=True)
            ctx.exit(143)
        finally:
            signal.signal(signal.SIGTERM, previous)


class FiniteFloatRange(click.FloatRange):
    """click.FloatRange that also refuses nan (which every range comparison lets through) and ±inf,
    by name: float('nan') parses, and poisons a run. `FiniteFloatRange()` is any finite float."""

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)
