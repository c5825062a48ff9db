"""``python -m core``: see core/cli/."""

import os
import sys

# Quiet TensorFlow's C++ start-up chatter before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from core.devices import configure_on_import
from core.errors import ConfigError

try:
    # TensorFlow's devices (TRANSFER_STUDIO_LOGICAL_CPUS, GPU memory growth) are set as it
    # loads, before any op, whichever command loads it; a bad setting is one error line.
    configure_on_import()
except ConfigError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(1)

from core.cli import main

sys.exit(main())
