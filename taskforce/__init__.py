"""taskforce: keeps a host's daemons running and reacts exactly to change.

The package is split in two: :mod:`taskforce.core` decides (pure, no OS), the
rest of the package performs (processes, files, signals, timers, sockets).
"""

__version__ = "1.0.0.dev0"
