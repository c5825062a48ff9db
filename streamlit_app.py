"""Transfer Studio's dashboard: ``streamlit run streamlit_app.py``. The one router.

Pages live in ``app/pages``, shared widgets in ``app/widgets.py``, pure view code in
``app/views``; the engine they all drive is ``core``.
"""

import streamlit as st

from app import widgets
from core.devices import configure_on_import
from core.errors import StudioError

try:
    # GPU memory growth before TensorFlow loads: the server predicts beside a worker that trains.
    configure_on_import()
except StudioError as exc:  # a bad TRANSFER_STUDIO_LOGICAL_CPUS: said, the pages still work
    st.error(str(exc))
widgets.setup_app()
st.navigation(widgets.pages()).run()
