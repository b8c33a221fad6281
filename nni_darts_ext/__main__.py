"""``python -m nni_darts_ext ...`` runs the ``nni-darts`` command line (robust where the console script is not on PATH,
e.g. in an nnictl trial).

Example::

    python -m nni_darts_ext retrain --nni --recipe demo --arch darts-v2 --out runs/trial
"""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
