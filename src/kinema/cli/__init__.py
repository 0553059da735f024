"""The `kinema` command. Each group lives in its own module and registers on `app`.

Heavy imports (torch, models) happen inside the commands so `kinema --help` is quick.
"""

from __future__ import annotations

import gc
import sys

import typer

app = typer.Typer(
    name="kinema",
    help="Latent video diffusion: train on your clips, generate videos from text, images, keyframes or clips.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

from kinema.cli import data as _data  # noqa: E402,F401  (registers `kinema data ...`)
from kinema.cli import info as _info  # noqa: E402,F401  (registers `kinema info`)
from kinema.cli import generate as _generate  # noqa: E402,F401  (registers `kinema generate`)
from kinema.cli import eval as _eval  # noqa: E402,F401  (registers `kinema eval ...`)
from kinema.cli import train as _train  # noqa: E402,F401  (registers `kinema train`)


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input exits 2 with a one-line message, internal failures exit 1."""
    from kinema.errors import KinemaError

    try:
        rc = app(args=argv, standalone_mode=False)  # returns typer.Exit's code in this mode
        if isinstance(rc, int) and rc != 0:
            sys.exit(rc)
    except KinemaError as e:
        typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as e:
        # click's (typer's vendored click) usage errors know how to show themselves and exit with 2
        if hasattr(e, "show") and isinstance(getattr(e, "exit_code", None), int):
            e.show()
            sys.exit(e.exit_code)
        raise
    finally:
        if argv is None:
            # The process is about to end: its last collections would walk every object torch made, about
            # 0.5 s on 2 CPU cores, for memory the OS takes back anyway. Frozen objects are skipped.
            gc.freeze()
