"""The ``dro-sfm`` command line. Each subcommand is a thin wrapper over a library function."""

from __future__ import annotations

import sys

import click

from dro_sfm.errors import DroSfmError


class _FriendlyGroup(click.Group):
    """A click group that prints a ``DroSfmError`` as one line and exits 1, without a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DroSfmError as err:
            click.secho(f"error: {err}", fg="red", err=True)
            sys.exit(1)


@click.group(cls=_FriendlyGroup)
@click.version_option(package_name="dro-sfm")
def main() -> None:
    """dro-sfm: depth, camera poses, point clouds and meshes from image sequences with DRO."""


# Subcommands are registered below; each lives beside the concept it drives.
# --- commands ---
