"""`python -m services.executor [--account-id N] [--port P]`: the same as `scalper serve executor` (one entry point, one
builder: services/executor/build.py). The settings come from SCALPER_* as for every service."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from scalper.cli import app

    app(["serve", "executor", *(sys.argv[1:] if argv is None else argv)], prog_name="python -m services.executor")
    return 0


if __name__ == "__main__":
    sys.exit(main())
