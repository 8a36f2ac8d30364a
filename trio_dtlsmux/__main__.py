"""``python -m trio_dtlsmux``: the command line (see :mod:`trio_dtlsmux._cli`).

The ``trio-dtlsmux`` console script calls :func:`main` from here too.
"""

from __future__ import annotations

import sys

from ._cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
