"""Virtual chunks: references to byte ranges of files outside the repository.

``containers`` declares where such files may be and how a reader reaches them;
``locations`` parses every URL once into its canonical form; ``staging`` holds the values
and columns that sessions stage; ``sources`` fetches byte ranges per store type;
``resolver`` reads them for sessions through the containers the reader authorized.
"""

from .containers import (
    AnyCredential,
    AnyObjectStoreConfig,
    AzureStoreConfig,
    GcsStoreConfig,
    HttpStoreConfig,
    LocalFileSystemStoreConfig,
    ObjectStoreConfig,
    S3Credentials,
    S3Options,
    S3StaticCredentials,
    S3StoreConfig,
    VirtualChunkContainer,
    azure_store,
    containers_credentials,
    gcs_store,
    http_store,
    local_filesystem_store,
    s3_anonymous_credentials,
    s3_credentials,
    s3_from_env_credentials,
    s3_refreshable_credentials,
    s3_static_credentials,
    s3_store,
)
from .locations import Location, LocationError, parse_location
from .resolver import VirtualResolver
from .sources import local_etag
from .staging import ChunkType, VirtualChunkSpec, check_authorization

__all__ = [
    "AnyCredential",
    "AnyObjectStoreConfig",
    "AzureStoreConfig",
    "ChunkType",
    "GcsStoreConfig",
    "HttpStoreConfig",
    "LocalFileSystemStoreConfig",
    "Location",
    "LocationError",
    "S3Credentials",
    "S3StaticCredentials",
    "S3Options",
    "ObjectStoreConfig",
    "S3StoreConfig",
    "VirtualChunkContainer",
    "VirtualChunkSpec",
    "VirtualResolver",
    "azure_store",
    "check_authorization",
    "containers_credentials",
    "gcs_store",
    "http_store",
    "local_etag",
    "local_filesystem_store",
    "parse_location",
    "s3_anonymous_credentials",
    "s3_credentials",
    "s3_from_env_credentials",
    "s3_refreshable_credentials",
    "s3_static_credentials",
    "s3_store",
]
