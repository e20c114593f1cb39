"""Run the web UI from a checkout: `streamlit run scripts/app.py` (installed: just `turtle`).

The app lives in the package (tortoise/webui/app.py) so a wheel install carries it; this file only draws it.
"""
from tortoise.webui.app import render

render()
