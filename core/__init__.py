"""Transfer Studio's engine: backbones, data, training, run store and CLI.

This package never imports streamlit: the dashboard pages, the CLI (``python -m core``) and the
tests all drive it the same way.
"""

__version__ = "0.1.0"
