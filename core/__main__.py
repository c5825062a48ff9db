"""``python -m core``: see core/cli.py."""

import os
import sys

# Quiet TensorFlow's C++ start-up chatter before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from core.cli import main

sys.exit(main())
