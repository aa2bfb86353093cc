"""The release of ``httpworker.py``: what a code change edits.

``VERSION`` is what every answer names; ``BROKEN = True`` is a release that
exits 1 at start-up (the broken release of the rollout test and benchmark).
The worker imports this module, so taskforce's ``python`` event sees an edit
here as a change of the worker's code.  Keep it plain assignments: the test
and the benchmark rewrite it whole.
"""

VERSION = "1"
BROKEN = False
