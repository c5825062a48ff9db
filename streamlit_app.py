"""Transfer Studio's dashboard: ``streamlit run streamlit_app.py``. The one router.

The page scripts live in ``pages/`` (listed in ``app.navigation.PAGES``: with ``st.navigation``
Streamlit shows only those, once each), their panels and shared widgets in ``app/``, pure view
code in ``app/views``; the engine they all drive is ``core``.
"""

import streamlit as st

from app import navigation, warmup
from core.devices import configure_on_import
from core.errors import StudioError

try:
    # GPU memory growth before TensorFlow loads: the server predicts beside a worker that trains.
    configure_on_import()
except StudioError as exc:  # a bad TRANSFER_STUDIO_LOGICAL_CPUS: said, the pages still work
    st.error(str(exc))
navigation.setup_app()
try:
    st.navigation(navigation.pages()).run()
finally:  # after the page (also one that stopped early): the imports run while it is read
    warmup.start()
