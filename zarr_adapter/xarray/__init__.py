"""``frazil.xarray``: xarray datasets written into a frazil session, the data of dask-backed
variables on the workers through ``frazil.dask.store_dask`` (``to_frazil``)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from frazil.dask import check_split_every, store_dask
from frazil.errors import InvalidInputError, ReadOnlyError
from frazil.session import Session

if TYPE_CHECKING:
    import xarray

XarrayRegion = Mapping[str, slice | Literal["auto"]] | Literal["auto"] | None
XarrayWriteMode = Literal["w", "w-", "a", "a-", "r+", "r"]

__all__ = ["to_frazil", "to_icechunk"]


def to_frazil(
    obj: xarray.Dataset | xarray.DataArray,
    session: Session,
    *,
    group: str | None = None,
    mode: XarrayWriteMode | None = None,
    safe_chunks: bool = True,
    append_dim: Hashable | None = None,
    region: XarrayRegion = None,
    encoding: Mapping[Any, Any] | None = None,
    split_every: int | None = None,
) -> None:
    """Write an xarray Dataset (or DataArray) into a writable frazil session, with the
    dask-backed variables written in parallel on the workers; then commit the session.

    The arguments mean what they mean for ``Dataset.to_zarr`` (always Zarr v3, never
    consolidated): metadata and in-memory variables are written directly through
    ``session.store``, then the data of dask-backed variables goes through ``store_dask``
    (each block in a fork of the session, merged back in a tree of ``split_every``). With
    ``append_dim`` the arrays are resized and the new data lands in the tail; with
    ``region`` it lands in that region (``"auto"`` works as in xarray). Example::

        session = repo.writable_session("main")
        to_frazil(ds.chunk({"time": 10}), session)
        session.commit("first ten years")
        session = repo.writable_session("main")
        to_frazil(more.chunk({"time": 10}), session, append_dim="time")
        session.commit("one more year")
    """
    import xarray as xr
    from xarray.backends.api import DATAARRAY_NAME, DATAARRAY_VARIABLE
    from xarray.backends.common import ArrayWriter

    try:
        from xarray.backends.writers import (
            _validate_dataset_names,
            dump_to_store,
            get_writable_zarr_store,
        )
    except ImportError as e:  # pragma: no cover - depends on the installed xarray
        raise ImportError(
            f"to_frazil needs a newer xarray (with "
            f"xarray.backends.writers.get_writable_zarr_store): {e}"
        ) from None

    if not isinstance(session, Session):
        raise InvalidInputError(
            f"to_frazil writes into a frazil Session, got {type(session).__name__}"
        )
    if session.read_only:
        raise ReadOnlyError("to_frazil needs a writable session: repo.writable_session(branch)")
    fan_in = check_split_every(split_every)
    if isinstance(obj, xr.DataArray):
        if obj.name is None:
            dataset = obj.to_dataset(name=DATAARRAY_VARIABLE)
        elif obj.name in obj.coords or obj.name in obj.dims:
            dataset = obj.to_dataset(name=DATAARRAY_VARIABLE)
            dataset.attrs[DATAARRAY_NAME] = obj.name
        else:
            dataset = obj.to_dataset()
    elif isinstance(obj, xr.Dataset):
        dataset = obj.copy(deep=False)
    else:
        raise InvalidInputError(
            f"to_frazil writes an xarray Dataset or DataArray, got {type(obj).__name__}"
        )

    _validate_dataset_names(dataset)
    for variable in dataset.variables.values():
        if variable.size == 0:  # as xarray does: zero-length dask arrays are loaded
            variable.load()
    zstore = get_writable_zarr_store(
        session.store,
        mode=mode,
        group=group,
        consolidated=False,
        append_dim=append_dim,
        region=region,
        safe_chunks=safe_chunks,
        zarr_format=3,
    )
    dataset = zstore._validate_and_autodetect_region(dataset)
    encoding = dict(encoding or {})
    zstore._validate_encoding(encoding)
    # ArrayWriter writes in-memory variables at once and collects the dask ones, encoded
    # and with their target zarr array and region, instead of storing them
    writer = ArrayWriter()
    dump_to_store(dataset, zstore, writer, encoding=encoding)
    if writer.sources:
        merged = store_dask(
            list(writer.sources),
            list(writer.targets),
            [tuple(r) if r else None for r in writer.regions],
            split_every=fan_in,
        )
        if merged is not None:  # written through a fork: its writes go into that fork
            session.merge(merged)


to_icechunk = to_frazil
"""Icechunk's name of ``to_frazil`` (``frazil.xarray.to_icechunk``)."""
