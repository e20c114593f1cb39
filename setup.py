# Everything lives in pyproject.toml; this file lets older pip versions do an editable install.
from setuptools import setup

setup()
