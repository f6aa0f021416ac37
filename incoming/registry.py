"""The uploads this server knows, by ticket id."""

from __future__ import annotations

import uuid

from twisted.logger import Logger

from .upload import Ticket, Upload


def parse_ticket_id(text: str) -> str | None:
    """The canonical form of a ticket id, or None if it is not a UUID."""
    try:
        return str(uuid.UUID(text))
    except (ValueError, TypeError, AttributeError):
        return None


class UploadRegistry:
    """Creates uploads, finds them by ticket, forgets them when they end."""

    _log = Logger()

    def __init__(self, settings, storage, backend, clock):
        self._settings = settings
        self._storage = storage
        self._backend = backend
        self._clock = clock
        self._uploads: dict[str, Upload] = {}

    def create(self, signal_finish_url: str, backend_secret: str,
               remove_file_when_finished: bool) -> Upload:
        ticket = Ticket(
            id=str(uuid.uuid4()),
            signal_finish_url=signal_finish_url,
            backend_secret=backend_secret,
            remove_file_when_finished=remove_file_when_finished,
        )
        upload = Upload(ticket, self._settings, self._storage, self._backend,
                        self._clock, self._forget)
        self._uploads[ticket.id] = upload
        self._log.info(
            "upload {id}: created (handover to {url}, remove when finished: {remove})",
            id=ticket.id, url=signal_finish_url, remove=remove_file_when_finished,
        )
        return upload

    def get(self, ticket_id: str) -> Upload | None:
        canonical = parse_ticket_id(ticket_id)
        return self._uploads.get(canonical) if canonical else None

    def __len__(self) -> int:
        return len(self._uploads)

    def _forget(self, upload: Upload) -> None:
        self._uploads.pop(upload.ticket.id, None)
