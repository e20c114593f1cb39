"""The Streamlit web UI. `turtle` (:mod:`tortoise.webui.launch`) checks the device environment, then serves the page
(`tortoise/webui/app.py`); the page's parts: settings, generation, device and voice panels, wording.

Importing this package is cheap: Streamlit and the models load only in the app process.
"""
from tortoise.webui.launch import main  # noqa: F401 (`python -m tortoise.webui`, and the original entry point)
