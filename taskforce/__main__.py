"""``python -m taskforce``: the same as the ``taskforce`` command."""

import sys

from taskforce.cli import main

sys.exit(main())
