"""``python -m funnel_tl.cli``: the command line, as ``python -m funnel_tl``."""

import sys

from funnel_tl.cli.entry import main

sys.exit(main())
