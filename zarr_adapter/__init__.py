"""frazil's zarr integration: the ``zarr.abc.store.Store`` over a session."""

from .store import FrazilStore

__all__ = ["FrazilStore"]
