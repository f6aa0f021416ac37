"""Upload ticket ids: UUIDs, checked before any lookup or path use."""

from __future__ import annotations

import uuid


def new_ticket_id() -> str:
    return str(uuid.uuid4())


def parse_ticket_id(text) -> str | None:
    """The canonical form of a ticket id, or None if it is not a UUID."""
    try:
        return str(uuid.UUID(text))
    except (ValueError, TypeError, AttributeError):
        return None
