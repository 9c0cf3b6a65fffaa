"""``python -m freshrec``: the command line, as the ``freshrec`` script runs it.

This is what every rank runs under ``torchrun --nproc-per-node N -m freshrec train ...``.
"""

import sys

from freshrec.cli import main

if __name__ == "__main__":
    sys.exit(main())
