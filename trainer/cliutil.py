"""What every `phm-*` click command shares: failures as one `Error: …` line on stderr.

    @click.command(cls=OneLineCommand)

Click prints a usage dump before a usage error (bad option value, missing argument); the project's
rule is one clear line for every failure, so usage errors are re-raised as a plain ClickException.
"""

from __future__ import annotations

import click

__all__ = ["OneLineCommand"]


class OneLineCommand(click.Command):
    """Usage errors as one `Error: …` line (no usage dump), like every other failure."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            raise click.ClickException(e.format_message()) from None
