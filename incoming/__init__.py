"""Incoming!!: takes large file uploads off a web app's back."""

__version__ = "0.2.0.dev0"
