"""``python -m rlhf.cli``: the same as the ``rlhf`` command."""

import sys

from rlhf.cli import main

sys.exit(main())
