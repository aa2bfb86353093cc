#!/usr/bin/env python3
"""A stand-in one-shot job for the examples: works a moment, then exits 0."""

import os
import sys
import time

print(f"migrate: applying schema for {os.environ.get('DB_NAME', '?')}", file=sys.stderr, flush=True)
time.sleep(1)
print("migrate: done", file=sys.stderr, flush=True)
