"""Packaging; metadata lives in setup.cfg.

The twistd plugin lives in twisted/plugins/ (no __init__.py there, so it
stays part of Twisted's namespace); it is listed as a module here so that a
regular install copies it into site-packages/twisted/plugins/.

The browser files in frontend/ (incoming.js, the demo page) are installed
as incoming/frontend/ inside the package, so that the installed server can
serve them (incoming.static finds them there).
"""

from setuptools import find_packages, setup

FRONTEND_FILES = ["*.js", "*.mjs", "*.d.ts", "*.html", "*.css"]

setup(
    py_modules=["twisted.plugins.incoming_plugin"],
    packages=find_packages(include=["incoming", "incoming.*"])
    + ["incoming.frontend", "incoming.frontend.demo"],
    package_dir={"incoming.frontend": "frontend"},
    package_data={
        "incoming.frontend": FRONTEND_FILES,
        "incoming.frontend.demo": FRONTEND_FILES,
    },
)
