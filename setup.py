"""Build hook for pylon's native part (the private-key hook, cffi API mode); metadata is in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["src/pylon/keys/_build.py:ffibuilder"])
