"""``make demo``: a short end-to-end tour of frazil on a local directory."""

from __future__ import annotations

import tempfile

import numpy as np
import pandas as pd
import xarray as xr
import zarr

import frazil


def say(text: str) -> None:
    print(f"\n== {text}")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="frazil-demo-") as where:
        say(f"Create a repository in {where}")
        repo = frazil.Repository.create(frazil.local_filesystem_storage(where))

        say("Write an xarray dataset through a session, then commit")
        ds = xr.Dataset(
            {
                "temperature": (
                    ("time", "lat", "lon"),
                    15 + 8 * np.random.default_rng(0).standard_normal((4, 3, 5)),
                )
            },
            coords={
                "time": pd.date_range("2026-01-01", periods=4, freq="D"),
                "lat": [10.0, 20.0, 30.0],
                "lon": np.arange(5.0),
            },
            attrs={"title": "frazil demo"},
        )
        session = repo.writable_session("main")
        ds.to_zarr(
            session.store, consolidated=False, encoding={"temperature": {"chunks": (1, 3, 5)}}
        )
        first = session.commit("Add temperature")
        print(f"committed snapshot {first}")

        say("Create branch 'warmer' and change data on it")
        repo.create_branch("warmer", first)
        session = repo.writable_session("warmer")
        arr = zarr.open_array(session.store, path="temperature")
        arr[2] = np.asarray(arr[2]) + 10.0  # one time step: one chunk changes
        print("uncommitted changes:\n" + str(session.status()))
        second = session.commit("Warm day 3 by 10 degrees")
        print(f"committed snapshot {second} on 'warmer'")

        say("Read the old and the new version")
        old = xr.open_zarr(repo.readonly_session("main").store, consolidated=False)
        new = xr.open_zarr(repo.readonly_session("warmer").store, consolidated=False)
        print("main   day-3 mean:", float(old.temperature.isel(time=2).mean()))
        print("warmer day-3 mean:", float(new.temperature.isel(time=2).mean()))
        print(
            "time travel to the first snapshot equals main:",
            bool(
                xr.open_zarr(
                    repo.readonly_session(snapshot_id=first).store, consolidated=False
                ).identical(old)
            ),
        )

        say("diff main..warmer")
        print(repo.diff(from_branch="main", to_branch="warmer"))

        say("History of 'warmer'")
        for info in repo.ancestry(branch="warmer"):
            print(f"{info.id}  {info.written_at:%Y-%m-%d %H:%M:%S}  {info.message}")


if __name__ == "__main__":
    main()
