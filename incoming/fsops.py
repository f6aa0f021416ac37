"""Small blocking file-system helpers shared by the folder stores (run them
in a storage thread)."""

from __future__ import annotations

import os


def remove_quietly(path: str) -> bool:
    """Delete a file we created; True if it was there."""
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
