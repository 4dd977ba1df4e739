"""Build hook for pylon's native parts (cffi API mode: the private-key hook, the libnghttp2 binding); metadata is in
pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["src/pylon/keys/_build.py:ffibuilder", "src/pylon/proxy/http/_h2_build.py:ffibuilder"])
