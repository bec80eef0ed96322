"""Icechunk's configuration classes in frazil: constructors, setters, validation, what
they map onto, and their round trip through ``save_config`` / ``open``."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import pickle
from typing import Any

import pytest
import zarr

import frazil
from frazil import (
    CachingConfig,
    CompressionAlgorithm,
    CompressionConfig,
    ManifestConfig,
    ManifestPreloadCondition,
    ManifestPreloadConfig,
    ManifestSplitCondition,
    ManifestSplitDimCondition,
    ManifestSplittingConfig,
    RepositoryConfig,
    StorageConcurrencySettings,
    StorageRetriesSettings,
    StorageSettings,
)


def shape(fn: Any) -> str:
    sig = inspect.signature(fn)
    return str(
        sig.replace(
            parameters=[p.replace(annotation=p.empty) for p in sig.parameters.values()],
            return_annotation=sig.empty,
        )
    )


# Icechunk 1.1.21's constructors (annotations left out)
ICECHUNK_SIGNATURES = {
    CachingConfig: (
        "(self, num_snapshot_nodes=None, num_chunk_refs=None, num_transaction_changes=None, "
        "num_bytes_attributes=None, num_bytes_chunks=None)"
    ),
    CompressionConfig: "(self, algorithm=None, level=None)",
    ManifestConfig: "(self, preload=None, splitting=None)",
    ManifestPreloadConfig: "(self, max_total_refs=None, preload_if=None)",
    ManifestSplittingConfig: "(self, split_sizes)",
    StorageRetriesSettings: "(self, max_tries=None, initial_backoff_ms=None, max_backoff_ms=None)",
    StorageConcurrencySettings: (
        "(self, max_concurrent_requests_for_object=None, ideal_concurrent_request_size=None)"
    ),
    StorageSettings: (
        "(self, concurrency=None, retries=None, unsafe_use_conditional_create=None, "
        "unsafe_use_conditional_update=None, unsafe_use_metadata=None, storage_class=None, "
        "metadata_storage_class=None, chunks_storage_class=None, "
        "minimum_size_for_multipart_upload=None)"
    ),
}


@pytest.mark.parametrize("cls", list(ICECHUNK_SIGNATURES), ids=lambda c: c.__name__)
def test_constructors_match_icechunk(cls: type) -> None:
    assert shape(cls.__init__) == ICECHUNK_SIGNATURES[cls]


def test_repository_config_takes_icechunks_positional_parameters() -> None:
    params = list(inspect.signature(RepositoryConfig).parameters.values())
    positional = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == [
        "inline_chunk_threshold_bytes",
        "get_partial_values_concurrency",
        "compression",
        "max_concurrent_requests",
        "caching",
        "storage",
        "virtual_chunk_containers",
        "manifest",
    ]
    assert all(p.default is None for p in params if p.kind is p.POSITIONAL_OR_KEYWORD)
    assert {p.name for p in params if p.kind is p.KEYWORD_ONLY} >= {"manifest_split_rows"}


def full_config() -> RepositoryConfig:
    preload_if = ManifestPreloadCondition.or_conditions(
        [
            ManifestPreloadCondition.path_matches("^/a"),
            ManifestPreloadCondition.num_refs(0, 1000) & ManifestPreloadCondition.true(),
        ]
    )
    splitting = ManifestSplittingConfig.from_dict(
        {
            ManifestSplitCondition.name_matches("temp.*"): {
                ManifestSplitDimCondition.DimensionName("longitude"): 3,
                ManifestSplitDimCondition.Axis(0): 2,
            },
            ManifestSplitCondition.AnyArray(): {ManifestSplitDimCondition.Any(): 50},
        }
    )
    return RepositoryConfig(
        inline_chunk_threshold_bytes=100,
        get_partial_values_concurrency=4,
        compression=CompressionConfig(CompressionAlgorithm.default(), 5),
        max_concurrent_requests=32,
        caching=CachingConfig(num_chunk_refs=1000, num_bytes_chunks=1 << 20),
        storage=StorageSettings(
            concurrency=StorageConcurrencySettings(4, 1 << 20),
            retries=StorageRetriesSettings(max_tries=3, max_backoff_ms=100),
            unsafe_use_metadata=False,
            storage_class="STANDARD_IA",
        ),
        manifest=ManifestConfig(ManifestPreloadConfig(10_000, preload_if), splitting),
    )


def test_settings_round_trip_through_save_config_and_open() -> None:
    storage = frazil.in_memory_storage()
    config = full_config()
    frazil.Repository.create(storage, config)
    fetched = frazil.Repository.fetch_config(storage)
    assert fetched == config
    opened = frazil.Repository.open(storage).config
    for name in ("get_partial_values_concurrency", "compression", "caching", "storage"):
        assert getattr(opened, name) == getattr(config, name), name
    assert opened.manifest == config.manifest
    assert opened.caching is not None and opened.caching.num_chunk_refs == 1000
    assert RepositoryConfig.from_dict(config.to_dict()) == config
    # changed and saved again
    repo = frazil.Repository.open(storage)
    assert repo.config.caching is not None
    repo.config.caching.num_snapshot_nodes = 7
    repo.config.compression = None
    repo.save_config()
    again = frazil.Repository.open(storage).config
    assert again.caching is not None and again.caching.num_snapshot_nodes == 7
    assert again.compression is None


def test_properties_have_setters() -> None:
    c = CachingConfig()
    assert c.num_chunk_refs is None
    c.num_chunk_refs = 10
    assert c.num_chunk_refs == 10 and c == CachingConfig(num_chunk_refs=10)
    s = StorageSettings()
    s.retries = StorageRetriesSettings(max_tries=2)
    s.unsafe_use_conditional_update = False
    assert s.retries.max_tries == 2 and s.unsafe_use_conditional_update is False
    m = ManifestConfig()
    m.splitting = ManifestSplittingConfig(
        ((ManifestSplitCondition.AnyArray(), ((ManifestSplitDimCondition.Axis(0), 8),)),)
    )
    assert m.splitting.split_sizes[0][1][0] == (ManifestSplitDimCondition.Axis(0), 8)
    cfg = RepositoryConfig.default()
    cfg.get_partial_values_concurrency = 3
    cfg.caching = c
    assert cfg.caching is c and cfg.get_partial_values_concurrency == 3


@pytest.mark.parametrize(
    "make",
    [
        lambda: CachingConfig(num_chunk_refs=-1),
        lambda: CachingConfig(num_chunk_refs="many"),  # type: ignore[arg-type]
        lambda: CompressionConfig(algorithm="zstd"),  # type: ignore[arg-type]
        lambda: CompressionConfig(level=True),  # type: ignore[arg-type]
        lambda: StorageSettings(storage_class=3),  # type: ignore[arg-type]
        lambda: StorageSettings(unsafe_use_metadata="no"),  # type: ignore[arg-type]
        lambda: StorageSettings(retries=StorageConcurrencySettings()),  # type: ignore[arg-type]
        lambda: ManifestConfig(splitting={"a": 1}),  # type: ignore[arg-type]
        lambda: ManifestSplittingConfig(((ManifestSplitCondition.AnyArray(), ()), 5)),  # type: ignore[arg-type]
        lambda: ManifestSplittingConfig(
            ((ManifestSplitCondition.AnyArray(), ((ManifestSplitDimCondition.Any(), 0),)),)
        ),
        lambda: ManifestSplitCondition.path_matches("("),
        lambda: ManifestPreloadCondition.num_refs(-1, None),
        lambda: ManifestSplitDimCondition.Axis(-2),
        lambda: RepositoryConfig(caching=CompressionConfig()),  # type: ignore[arg-type]
        lambda: RepositoryConfig(get_partial_values_concurrency="8"),  # type: ignore[arg-type]
        lambda: setattr(CachingConfig(), "num_chunk_ref", 3),
        lambda: setattr(RepositoryConfig(), "storage", {}),
        lambda: RepositoryConfig.from_dict({"caching": {"num_chunk_refs": 1, "nonesuch": 2}}),
        lambda: RepositoryConfig.from_dict({"compression": {"algorithm": "gzip"}}),
        lambda: RepositoryConfig.from_dict({"manifest": {"splitting": [[["bogus"], []]]}}),
    ],
)
def test_wrong_values_are_invalid_input(make: Any) -> None:
    with pytest.raises(frazil.InvalidInputError):
        make()


def test_a_damaged_saved_setting_is_a_format_error() -> None:
    storage = frazil.in_memory_storage()
    repo = frazil.Repository.create(storage)
    repo.config.extra["caching"] = {"num_chunk_refs": "lots"}  # as a broken writer would
    repo.save_config()
    with pytest.raises(frazil.FormatError, match="config.json"):
        frazil.Repository.open(storage)
    with pytest.raises(frazil.FormatError, match="config.json"):
        frazil.Repository.fetch_config(storage)


def test_region_sizes_first_matching_entry_first_dimension_condition() -> None:
    D = ManifestSplitDimCondition
    splitting = ManifestSplittingConfig.from_dict(
        {
            ManifestSplitCondition.name_matches("temp"): {D.DimensionName("lon"): 3},
            ManifestSplitCondition.AnyArray(): {D.Axis(1): 2, D.Any(): 1, D.Axis(0): 9},
        }
    )
    names = ("time", "lat", "lon")
    assert splitting.region_sizes("/g/temperature", 3, names) == (0, 0, 3)
    assert splitting.region_sizes("/g/temperature", 3, None) is None  # no names: no split
    assert splitting.region_sizes("/salinity", 3, names) == (1, 2, 1)  # Axis(0) came too late
    only = ManifestSplittingConfig.from_dict(
        {ManifestSplitCondition.path_matches("^/a$"): {D.Any(): 4}}
    )
    assert only.region_sizes("/b", 1, None) is None
    assert only.region_sizes("/a", 2, None) == (4, 4)
    assert not hasattr(only, "split_rows")  # splitting no longer stands in for rows
    assert RepositoryConfig(manifest=ManifestConfig(splitting=only)).manifest_split_rows is None


def _manifest_refs(repo: frazil.Repository, sid: str, path: str) -> list[dict[str, Any]]:
    import json

    doc = json.loads(repo.inspect_snapshot(sid))
    (node,) = [n for n in doc["nodes"] if n["path"] == path]
    return list(node["manifest_refs"])


def test_splitting_writes_one_segment_object_per_region() -> None:
    D = ManifestSplitDimCondition
    splitting = ManifestSplittingConfig.from_dict(
        {ManifestSplitCondition.name_matches("^t$"): {D.DimensionName("x"): 3}}
    )
    storage = frazil.in_memory_storage()
    frazil.Repository.create(
        storage,
        RepositoryConfig(inline_chunk_threshold_bytes=0, manifest=ManifestConfig(None, splitting)),
    )
    repo = frazil.Repository.open(storage)  # the saved splitting applies on open
    session = repo.writable_session("main")
    t = zarr.create_array(
        session.store,
        name="t",
        shape=(2, 10),
        chunks=(1, 1),
        dtype="i1",
        dimension_names=("y", "x"),
    )
    other = zarr.create_array(session.store, name="u", shape=(10,), chunks=(1,), dtype="i1")
    t[:] = 1
    other[:] = 2
    sid = session.commit("two arrays")
    refs = _manifest_refs(repo, sid, "/t")
    # x cut every 3 chunks: [0-2] [3-5] [6-8] [9], each a segment in its own object
    assert sorted(r["extents"][1] for r in refs) == [[0, 3], [3, 6], [6, 9], [9, 10]]
    assert len({r["id"] for r in refs}) == 4
    assert len(_manifest_refs(repo, sid, "/u")) == 1  # not matched: not split
    # a write to x = 4..5 touches one region: one new segment
    session = repo.writable_session("main")
    zarr.open_array(session.store, path="t")[:, 4:6] = 7
    sid = session.commit("one region")
    refs = _manifest_refs(repo, sid, "/t")
    assert len(refs) == 5 and refs[0]["extents"] == [[0, 2], [4, 6]]
    ro = repo.readonly_session("main")
    assert (
        zarr.open_array(ro.store, path="t", mode="r")[:].tolist()
        == [[1, 1, 1, 1, 7, 7, 1, 1, 1, 1]] * 2
    )


def test_merging_stays_within_regions() -> None:
    D = ManifestSplitDimCondition
    splitting = ManifestSplittingConfig.from_dict(
        {ManifestSplitCondition.AnyArray(): {D.Axis(0): 2}}
    )
    repo = frazil.Repository.create(
        frazil.in_memory_storage(),
        RepositoryConfig(
            inline_chunk_threshold_bytes=0,
            manifest=ManifestConfig(None, splitting),
            manifest_merge_fanout=2,
        ),
    )
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="a", shape=(4,), chunks=(1,), dtype="i1")[:] = 0
    session.commit("create")
    for i in range(3):  # each commit writes both regions
        session = repo.writable_session("main")
        zarr.open_array(session.store, path="a")[:] = i + 1
        sid = session.commit(f"write {i}")
    refs = _manifest_refs(repo, sid, "/a")
    lo = sorted(r["extents"][0][0] // 2 for r in refs)
    # merged, but never across the region boundary at chunk 2
    assert all(r["extents"][0][1] - 1 < (r["extents"][0][0] // 2 + 1) * 2 for r in refs)
    assert lo.count(0) < 4 and lo.count(1) < 4  # the policy merged within each region
    ro = repo.readonly_session("main")
    assert zarr.open_array(ro.store, path="a", mode="r")[:].tolist() == [3, 3, 3, 3]


def test_merge_and_default() -> None:
    a = RepositoryConfig(caching=CachingConfig(num_chunk_refs=1), get_partial_values_concurrency=2)
    b = RepositoryConfig(
        storage=StorageSettings(storage_class="X"), get_partial_values_concurrency=5
    )
    merged = a.merge(b)
    assert merged.caching == CachingConfig(num_chunk_refs=1)
    assert merged.storage == StorageSettings(storage_class="X")
    assert merged.get_partial_values_concurrency == 5
    d = RepositoryConfig.default()  # sets nothing, as Icechunk's; creation fills defaults
    assert d.inline_chunk_threshold_bytes is None and d.caching is None
    assert d == RepositoryConfig()
    repo = frazil.Repository.create(frazil.in_memory_storage(), d)
    assert repo.config == d  # only what was set is stored; defaults apply at use
    assert repo.config.inline_threshold == 512
    assert frazil.Repository.fetch_config(repo.storage) == d


def test_config_reprs_are_icechunks() -> None:
    cfg = RepositoryConfig.default()
    assert repr(cfg).startswith(
        "RepositoryConfig(inline_chunk_threshold_bytes=None, get_partial_values_concurrency="
        "None, compression=None, caching=None, storage=None, manifest=None, "
    )
    cfg.storage = StorageSettings(storage_class="STANDARD_IA")
    assert (
        "storage=StorageSettings(concurrency=None, retries=None, unsafe_use_conditional_create"
        "=None, unsafe_use_conditional_update=None, unsafe_use_metadata=None, storage_class="
        '"STANDARD_IA", metadata_storage_class=None, chunks_storage_class=None)'
    ) in repr(cfg)
    cfg.storage.minimum_size_for_multipart_upload = 5
    assert "minimum_size_for_multipart_upload=5)" in repr(cfg)


def test_storage_default_settings() -> None:
    mem = frazil.in_memory_storage().default_settings()
    assert mem.retries == StorageRetriesSettings(1, 0, 0)
    assert mem.concurrency is not None
    s3 = frazil.s3_storage(bucket="b", prefix="p", max_attempts=3, anonymous=True)
    d = s3.default_settings()
    assert d.retries is not None and d.retries.max_tries == 3
    assert d.unsafe_use_conditional_update is True
    assert frazil.local_filesystem_storage("unused").default_settings() == StorageSettings()


def test_condition_operators_and_hashing() -> None:
    p, n = ManifestSplitCondition.path_matches("a"), ManifestSplitCondition.name_matches("b")
    assert (p | n) == ManifestSplitCondition.or_conditions([p, n])
    assert (p & n) == ManifestSplitCondition.and_conditions([p, n])
    assert (p | n) != (p & n)
    assert len({p, ManifestSplitCondition.path_matches("a"), n}) == 2
    assert ManifestSplitDimCondition.Axis(1) == ManifestSplitDimCondition.Axis(1)
    assert ManifestSplitDimCondition.Axis(1) != ManifestSplitDimCondition.Axis(2)
    with pytest.raises(frazil.InvalidInputError):
        p | ManifestPreloadCondition.true()  # noqa: B018


# -- Repository methods -----------------------------------------------------------------------
def test_fetch_config_and_reopen() -> None:
    storage = frazil.in_memory_storage()
    assert frazil.Repository.fetch_config(storage) is None
    repo = frazil.Repository.create(storage, RepositoryConfig(manifest_split_rows=7))
    fetched = frazil.Repository.fetch_config(storage)
    assert fetched is not None and fetched.manifest_split_rows == 7
    assert asyncio.run(frazil.Repository.fetch_config_async(storage)) == fetched
    other = repo.reopen(RepositoryConfig(inline_chunk_threshold_bytes=0))
    assert other is not repo and other.storage is repo.storage
    assert other.config.inline_chunk_threshold_bytes == 0
    assert other.config.manifest_split_rows == 7  # the rest kept
    assert repo.config.inline_chunk_threshold_bytes is None  # the original is unchanged
    again = asyncio.run(repo.reopen_async())
    assert again.config == repo.config
    assert repo.authorized_virtual_container_prefixes() == set()
    with pytest.raises(frazil.InvalidInputError, match="RepositoryConfig"):
        repo.reopen({"inline_chunk_threshold_bytes": 0})  # type: ignore[arg-type]


def test_reopen_with_virtual_chunk_access() -> None:
    config = RepositoryConfig.default()
    container = frazil.VirtualChunkContainer("s3://bucket/", frazil.s3_store(region="us-east-1"))
    config.set_virtual_chunk_container(container)
    repo = frazil.Repository.create(frazil.in_memory_storage(), config)
    assert repo.authorized_virtual_container_prefixes() == set()
    authorized = repo.reopen(
        authorize_virtual_chunk_access={"s3://bucket/": frazil.s3_anonymous_credentials()}
    )
    assert authorized.authorized_virtual_container_prefixes() == {"s3://bucket/"}
    assert authorized.reopen().authorized_virtual_container_prefixes() == {"s3://bucket/"}
    with pytest.raises(frazil.InvalidInputError, match="not a virtual chunk container"):
        repo.reopen(authorize_virtual_chunk_access={"s3://other/": None})


def test_async_ancestry() -> None:
    repo = frazil.Repository.create(frazil.in_memory_storage())
    for i in range(3):
        session = repo.writable_session("main")
        zarr.open_group(session.store, mode="a").attrs["i"] = i
        session.commit(f"c{i}")

    async def collect(**kw: Any) -> list[frazil.SnapshotInfo]:
        return [info async for info in repo.async_ancestry(**kw)]

    assert asyncio.run(collect(branch="main")) == list(repo.ancestry(branch="main"))
    tip = repo.lookup_branch("main")
    assert [i.message for i in asyncio.run(collect(snapshot_id=tip))][:2] == ["c2", "c1"]
    with pytest.raises(frazil.NotFoundError):
        asyncio.run(collect(branch="nonesuch"))
    assert (
        shape(frazil.Repository.async_ancestry)
        == "(self, *, branch=None, tag=None, snapshot_id=None)"
    )


def test_rewrite_manifests() -> None:
    repo = frazil.Repository.create(
        frazil.in_memory_storage(), RepositoryConfig(manifest_split_rows=4)
    )
    for i in range(3):
        session = repo.writable_session("main")
        root = zarr.open_group(session.store, mode="a")
        arr = root.require_array("x", shape=(8,), chunks=(1,), dtype="i1", fill_value=0)
        arr[2 * i : 2 * i + 2] = i + 1
        session.commit(f"c{i}")
    before = repo.lookup_branch("main")
    sid = repo.rewrite_manifests("rewritten", branch="main", metadata={"by": "me"})
    assert sid != before and repo.lookup_branch("main") == sid
    info = repo.lookup_snapshot(sid)
    assert info.message == "rewritten" and info.metadata["by"] == "me"
    assert info.parent_id == before
    arr = zarr.open_array(repo.readonly_session("main").store, path="x", mode="r")
    assert arr[:].tolist() == [1, 1, 2, 2, 3, 3, 0, 0]
    # nothing left to rewrite: no commit, the tip is returned
    assert repo.rewrite_manifests("again", branch="main") == sid
    assert asyncio.run(repo.rewrite_manifests_async("async", branch="main")) == sid
    assert shape(frazil.Repository.rewrite_manifests) == "(self, message, *, branch, metadata=None)"


# -- S3 names ---------------------------------------------------------------------------------
def fresh_credentials() -> frazil.S3StaticCredentials:
    return frazil.S3StaticCredentials(
        "key", "secret", expires_after=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    )


S3_SIGNATURES = {
    "S3StaticCredentials": (
        "(access_key_id, secret_access_key, session_token=None, expires_after=None)"
    ),
    "S3Options": (
        "(self, region=None, endpoint_url=None, allow_http=False, anonymous=False, "
        "force_path_style=False, network_stream_timeout_seconds=None, requester_pays=False)"
    ),
    "s3_store": (
        "(region=None, endpoint_url=None, allow_http=False, anonymous=False, "
        "s3_compatible=False, force_path_style=False, network_stream_timeout_seconds=60, "
        "requester_pays=False)"
    ),
    "s3_refreshable_credentials": "(get_credentials, scatter_initial_credentials=False)",
    "s3_credentials": (
        "(*, access_key_id=None, secret_access_key=None, session_token=None, "
        "expires_after=None, anonymous=None, from_env=None, get_credentials=None, "
        "scatter_initial_credentials=False)"
    ),
}


@pytest.mark.parametrize("name", sorted(S3_SIGNATURES))
def test_s3_signatures_match_icechunk(name: str) -> None:
    obj = getattr(frazil, name)
    assert shape(obj.__init__ if name == "S3Options" else obj) == S3_SIGNATURES[name]


def test_s3_credentials_family() -> None:
    static = frazil.S3StaticCredentials("k", "s", "t")
    made = frazil.S3Credentials.Static(static)
    assert made == frazil.s3_static_credentials(
        access_key_id="k", secret_access_key="s", session_token="t"
    )
    assert frazil.S3Credentials.Anonymous() == frazil.s3_anonymous_credentials()
    assert frazil.S3Credentials.FromEnv() == frazil.s3_from_env_credentials()
    refreshable = frazil.S3Credentials.Refreshable(pickle.dumps(fresh_credentials), static)
    assert refreshable.kind == "refreshable" and refreshable.current == static
    assert refreshable.get_credentials is fresh_credentials
    assert "secret" not in repr(frazil.S3StaticCredentials("k", "secret"))
    with pytest.raises(frazil.InvalidInputError):
        frazil.S3Credentials.Static("k")  # type: ignore[arg-type]
    with pytest.raises(frazil.InvalidInputError):
        frazil.S3StaticCredentials("k", None)  # type: ignore[arg-type]
    with pytest.raises(frazil.InvalidInputError, match="timezone"):
        frazil.S3StaticCredentials("k", "s", expires_after=dt.datetime(2030, 1, 1))


def test_s3_refreshable_credentials_pickle_and_scatter() -> None:
    lazy = frazil.s3_refreshable_credentials(fresh_credentials)
    assert lazy.kind == "refreshable" and lazy.current is None
    again = pickle.loads(pickle.dumps(lazy))
    assert again.get_credentials is fresh_credentials
    scattered = frazil.s3_refreshable_credentials(fresh_credentials, True)
    assert scattered.current is not None and scattered.current.access_key_id == "key"
    via = frazil.s3_credentials(get_credentials=fresh_credentials)
    assert via.kind == "refreshable"
    with pytest.raises(frazil.InvalidInputError):
        frazil.s3_credentials(get_credentials=fresh_credentials, anonymous=True)
    with pytest.raises(frazil.InvalidInputError, match="S3StaticCredentials"):
        frazil.s3_refreshable_credentials(dict, scatter_initial_credentials=True)
    # a virtual chunk container can be authorized with them
    config = RepositoryConfig.default()
    config.set_virtual_chunk_container(
        frazil.VirtualChunkContainer("s3://b/", frazil.s3_store(region="us-east-1"))
    )
    repo = frazil.Repository.create(
        frazil.in_memory_storage(), config, frazil.containers_credentials({"s3://b/": lazy})
    )
    assert repo.authorized_virtual_container_prefixes() == {"s3://b/"}


def test_refreshable_virtual_credentials_reach_the_s3_backend() -> None:
    from frazil.virtual.sources import _S3Source

    container = frazil.VirtualChunkContainer("s3://b/", frazil.s3_store(region="us-east-1"))
    cred = frazil.s3_refreshable_credentials(fresh_credentials)
    storage: Any = _S3Source(container, cred)._storage("b")
    assert storage.config.get_credentials is fresh_credentials
    assert not storage.config.from_env and storage.config.access_key_id is None


def test_s3_options_and_object_store_config() -> None:
    options = frazil.S3Options(region="eu-west-1")
    options.endpoint_url = "https://s3.example.com"
    options.force_path_style = True
    assert options.region == "eu-west-1" and options.force_path_style
    store = frazil.ObjectStoreConfig.S3(options)
    assert store == frazil.s3_store(
        "eu-west-1", "https://s3.example.com", force_path_style=True, s3_compatible=True
    )
    assert frazil.ObjectStoreConfig.S3Compatible(options) == store
    assert frazil.ObjectStoreConfig.LocalFileSystem("/d") == frazil.local_filesystem_store("/d")
    assert frazil.ObjectStoreConfig.Http() == frazil.http_store()
    assert frazil.ObjectStoreConfig.Gcs({"a": "b"}) == frazil.gcs_store({"a": "b"})
    with pytest.raises(frazil.InvalidInputError):
        options.allow_http = "yes"  # type: ignore[assignment]
    with pytest.raises(frazil.InvalidInputError):
        options.nonesuch = 1  # type: ignore[attr-defined]
    with pytest.raises(frazil.InvalidInputError, match="requester_pays"):
        frazil.ObjectStoreConfig.S3(frazil.S3Options(requester_pays=True))
    with pytest.raises(frazil.InvalidInputError, match="requester_pays"):
        frazil.s3_store(requester_pays=True)
    with pytest.raises(frazil.InvalidInputError, match="S3Options"):
        frazil.ObjectStoreConfig.S3({"region": "x"})  # type: ignore[arg-type]


def test_module_from_dict_and_to_dict() -> None:
    sizes = {
        ManifestSplitCondition.path_matches("^/a$"): {ManifestSplitDimCondition.Axis(0): 4},
        ManifestSplitCondition.AnyArray(): {ManifestSplitDimCondition.Any(): 9},
    }
    config = frazil.from_dict(sizes)
    assert isinstance(config, ManifestSplittingConfig)
    assert frazil.to_dict(config) == sizes == config.to_dict()
    assert frazil.to_dict(ManifestSplittingConfig.from_dict(sizes)) == sizes
    with pytest.raises(frazil.InvalidInputError):
        frazil.to_dict(sizes)  # type: ignore[arg-type]
    with pytest.raises(frazil.InvalidInputError):
        frazil.from_dict({ManifestSplitCondition.AnyArray(): 3})  # type: ignore[dict-item]


def test_object_store_config_variants_are_types() -> None:
    """Icechunk's code annotates with the variants (``ObjectStoreConfig.S3 |
    ObjectStoreConfig.Http``) and checks them with ``isinstance``."""
    osc = frazil.ObjectStoreConfig
    either = osc.S3 | osc.Http
    s3 = osc.S3(frazil.S3Options(region="us-east-1"))
    http = osc.Http()
    assert isinstance(s3, frazil.S3StoreConfig) and s3.region == "us-east-1"
    assert isinstance(s3, osc.S3) and isinstance(s3, osc.S3Compatible)
    assert not isinstance(s3, osc.Http) and isinstance(http, either) and isinstance(s3, either)
    assert isinstance(osc.LocalFileSystem("/data"), osc.LocalFileSystem)
    assert isinstance(osc.Gcs({"a": "b"}), osc.Gcs) and not isinstance(http, osc.Gcs)
    assert isinstance(s3, frazil.AnyObjectStoreConfig)
    with pytest.raises(frazil.InvalidInputError, match="S3Options"):
        osc.S3("us-east-1")  # type: ignore[arg-type]


def test_split_by_region_keeps_each_region_sorted() -> None:
    import numpy as np
    import pyarrow as pa

    from frazil.commit import split_by_region

    coords = np.array([[y, x] for y in range(3) for x in range(5)], dtype=np.int64)
    rows = pa.table({"n": np.arange(len(coords))})
    parts = list(split_by_region(coords, rows, (0, 2)))  # x cut every 2: 3 regions
    assert [p[0][:, 1].max() // 2 for p in parts] == [0, 1, 2]
    for part, part_rows in parts:
        assert part.tolist() == sorted(part.tolist())  # lexicographic order kept
        assert part_rows.column("n").to_pylist() == [5 * y + x for y, x in part.tolist()]
    assert sum(len(p[0]) for p in parts) == len(coords)
    (whole,) = split_by_region(coords, rows, (0, 8))  # one region: handed back as is
    assert whole[0] is coords and whole[1] is rows
