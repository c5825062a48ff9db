"""Transfer Studio's dashboard: ``streamlit run streamlit_app.py``. The one router.

Pages live in ``app/pages``, shared widgets in ``app/widgets.py``, pure view code in
``app/views``; the engine they all drive is ``core``.
"""

import streamlit as st

from app import widgets

widgets.setup_app()
st.navigation(widgets.pages()).run()
