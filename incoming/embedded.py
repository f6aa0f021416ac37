"""
The embedded default: everything in one process and the storage folder,
nothing else to install.  Other stores (Redis, S3) plug into the same
`StoreComposer`.
"""

from __future__ import annotations

from .file_state import FileStateStore
from .folder_store import FolderStore
from .interfaces import StoreComposer
from .local_bus import LocalBus
from .local_locker import LocalLocker


def embedded_stores(settings, run_blocking) -> StoreComposer:
    """Folder data, file records (in the same folder), local locks and bus."""
    data = FolderStore(settings.storage_dir, run_blocking)
    # Records are synced only at --fsync chunk; a complete file is found
    # again from its size.
    state = FileStateStore(data.folder, run_blocking, durable=settings.fsync == "chunk")
    return StoreComposer(data=data, state=state, locker=LocalLocker(), bus=LocalBus())
