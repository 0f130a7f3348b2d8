"""``python -m connectors.fleet``: the command the issue names, an alias of ``pm fleet``.

``python -m connectors.fleet status ...`` is ``pm fleet status ...``; ``alerts ...`` and
``web ...`` are passed to ``pm`` as they are. The application lives in :mod:`jobs.fleet`
(command-line applications are jobs); it is imported only when this runs as a script, so
no connector imports a job.
"""

from __future__ import annotations

import sys


def pm_argv(argv: list[str]) -> list[str]:
    """The ``pm`` arguments for ``python -m connectors.fleet`` arguments.

    >>> pm_argv(["status", "--json"]), pm_argv(["alerts", "ack", "x", "--by", "me"])
    (['fleet', 'status', '--json'], ['alerts', 'ack', 'x', '--by', 'me'])
    """
    if argv and argv[0] in ("fleet", "alerts", "web", "-h", "--help"):
        return argv
    return ["fleet", *argv]


if __name__ == "__main__":
    from jobs.fleet import main

    sys.exit(main(pm_argv(sys.argv[1:])))
