"""Every credential name in one module, as Icechunk's ``icechunk.credentials``: the S3, GCS
and Azure credential types and the functions that make them."""

from __future__ import annotations

from .storage.azure import (
    AnyAzureCredential,
    AnyAzureStaticCredential,
    AzureCredentials,
    AzureStaticCredentials,
    azure_credentials,
    azure_from_env_credentials,
    azure_static_credentials,
)
from .storage.gcs import (
    AnyGcsCredential,
    AnyGcsStaticCredential,
    GcsBearerCredential,
    GcsCredentials,
    GcsStaticCredentials,
    gcs_anonymous_credentials,
    gcs_credentials,
    gcs_from_env_credentials,
    gcs_refreshable_credentials,
    gcs_static_credentials,
)
from .virtual.containers import (
    AnyCredential,
    AnyS3Credential,
    Credentials,
    S3Credentials,
    S3StaticCredentials,
    containers_credentials,
    s3_anonymous_credentials,
    s3_credentials,
    s3_from_env_credentials,
    s3_refreshable_credentials,
    s3_static_credentials,
)

__all__ = [
    "AnyAzureCredential",
    "AnyAzureStaticCredential",
    "AnyCredential",
    "AnyGcsCredential",
    "AnyGcsStaticCredential",
    "AnyS3Credential",
    "AzureCredentials",
    "AzureStaticCredentials",
    "Credentials",
    "GcsBearerCredential",
    "GcsCredentials",
    "GcsStaticCredentials",
    "S3Credentials",
    "S3StaticCredentials",
    "azure_credentials",
    "azure_from_env_credentials",
    "azure_static_credentials",
    "containers_credentials",
    "gcs_anonymous_credentials",
    "gcs_credentials",
    "gcs_from_env_credentials",
    "gcs_refreshable_credentials",
    "gcs_static_credentials",
    "s3_anonymous_credentials",
    "s3_credentials",
    "s3_from_env_credentials",
    "s3_refreshable_credentials",
    "s3_static_credentials",
]
