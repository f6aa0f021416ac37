"""Packaging; metadata lives in setup.cfg.

The twistd plugin lives in twisted/plugins/ (no __init__.py there, so it
stays part of Twisted's namespace); it is listed as a module here so that a
regular install copies it into site-packages/twisted/plugins/.
"""

from setuptools import setup

setup(py_modules=["twisted.plugins.incoming_plugin"])
