"""``python -m taskforce``: the same as the ``taskforce`` command."""

import sys

from taskforce.cli import main

if __name__ == "__main__":  # not when a replay worker imports it
    sys.exit(main())
