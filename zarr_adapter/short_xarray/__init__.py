"""``frazil.xarray``: write xarray datasets into a frazil session, dask data on the workers."""

from frazil.zarr_adapter.distributed import to_frazil

__all__ = ["to_frazil"]
