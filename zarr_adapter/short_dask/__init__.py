"""``frazil.dask``: write dask arrays into a frazil session from many workers."""

from frazil.zarr_adapter.distributed import store_dask

__all__ = ["store_dask"]
