"""``python -m funnel_tl``: the command line, and what ``torchrun -m funnel_tl`` starts on every rank.

>>> import subprocess, sys  # doctest: +SKIP
>>> subprocess.run([sys.executable, "-m", "funnel_tl", "--help"])  # doctest: +SKIP
"""

import sys

from funnel_tl.cli.entry import main

sys.exit(main())
