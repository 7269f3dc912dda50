"""The bucket: where each snapshot's objects live, and the few S3 calls made on them (boto3 only).

Layout under BACKUP_REMOTE_URL (s3://bucket/prefix):

    <prefix>/snapshots/<id>/<artifact file>   one object per artifact (ciphertext when encrypted)
    <prefix>/snapshots/<id>/snapshot.json     the record (`RECORD_NAME`), written last

A snapshot exists remotely when, and only when, its record exists: an upload killed mid-way leaves
artifact objects without a record, which listing ignores and remote retention removes once they are
old. Credentials, region and endpoint are boto3's own (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_DEFAULT_REGION, AWS_ENDPOINT_URL); transfers are boto3's managed ones (multipart, concurrency,
retries). Every boto3/botocore failure leaves here as a one-line `RemoteError`.
"""

from __future__ import annotations

import contextlib
import json
from datetime import datetime, timezone
from typing import Callable, Iterator

import boto3
import botocore.exceptions
from boto3.exceptions import Boto3Error, S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from ..errors import ConfigError, RollbackError
from ..ids import SNAPSHOT_ID_RE
from ..settings import Settings

RECORD_NAME = "snapshot.json"
SNAPSHOTS = "snapshots/"
# A multipart part of 16 MiB keeps a 100 GiB artifact under S3's 10 000-part limit.
TRANSFER = TransferConfig(multipart_threshold=16 << 20, multipart_chunksize=16 << 20, max_concurrency=4)
CLIENT_CONFIG = Config(retries={"max_attempts": 4, "mode": "standard"}, connect_timeout=5, read_timeout=60)
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken",
                     "ExpiredToken", "403", "Forbidden", "InvalidClientTokenId"}


class RemoteError(RollbackError):
    """The bucket could not be reached, refused the request, or lacks what was asked for."""


class RemoteStore:
    """One bucket + prefix, from settings."""

    def __init__(self, settings: Settings):
        if not settings.remote_url:
            raise ConfigError("BACKUP_REMOTE_URL: not set; off-site copies are off")
        self.url = settings.remote_url
        self.bucket, self.prefix = settings.remote_bucket, settings.remote_prefix
        with errors("connect to"):
            self.client = boto3.session.Session().client("s3", config=CLIENT_CONFIG)

    def key(self, snapshot_id: str, name: str) -> str:
        return f"{self.prefix}{SNAPSHOTS}{snapshot_id}/{name}"

    def where(self, snapshot_id: str) -> str:
        return f"s3://{self.bucket}/{self.key(snapshot_id, '')}"

    # -- objects ------------------------------------------------------------------------------------
    def upload(self, reader, key: str, progress: Callable[[int], None]) -> None:
        with errors(f"upload s3://{self.bucket}/{key} to"):
            self.client.upload_fileobj(reader, self.bucket, key, Callback=progress, Config=TRANSFER)

    def download(self, key: str, writer, progress: Callable[[int], None]) -> None:
        with errors(f"download s3://{self.bucket}/{key} from"):
            self.client.download_fileobj(self.bucket, key, writer, Callback=progress, Config=TRANSFER)

    def put_json(self, key: str, doc: dict) -> None:
        body = json.dumps(doc, indent=2, ensure_ascii=False).encode("utf-8")
        with errors(f"write s3://{self.bucket}/{key} to"):
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/json")

    def get_json(self, key: str) -> dict | None:
        """The JSON object at `key`, or None when there is none."""
        with errors(f"read s3://{self.bucket}/{key} from"):
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            except botocore.exceptions.ClientError as exc:
                if _code(exc) in ("NoSuchKey", "404"):
                    return None
                raise
        try:
            doc = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise RemoteError(f"s3://{self.bucket}/{key} is not valid JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise RemoteError(f"s3://{self.bucket}/{key} is not a JSON object")
        return doc

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": k} for k in keys[start:start + 1000]]
            with errors(f"delete objects in s3://{self.bucket}/{self.prefix} of"):
                answer = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            if answer.get("Errors"):
                first = answer["Errors"][0]
                raise RemoteError(f"could not delete s3://{self.bucket}/{first.get('Key')}: {first.get('Code')} "
                                  f"{first.get('Message', '')}".rstrip())

    # -- listing ------------------------------------------------------------------------------------
    def objects(self) -> dict[str, list[dict]]:
        """Every object under <prefix>snapshots/, grouped by snapshot id: {"key", "size", "modified"}."""
        grouped: dict[str, list[dict]] = {}
        base = f"{self.prefix}{SNAPSHOTS}"
        with errors(f"list s3://{self.bucket}/{base} on"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
                for obj in page.get("Contents", []):
                    snapshot_id, _, name = obj["Key"][len(base):].partition("/")
                    if SNAPSHOT_ID_RE.fullmatch(snapshot_id) and name:
                        grouped.setdefault(snapshot_id, []).append(
                            {"key": obj["Key"], "name": name, "size": obj["Size"], "modified": obj["LastModified"]})
        return grouped

    def abort_stale_multipart(self, older_than: datetime) -> int:
        """Abort multipart uploads (of killed transfers) started before `older_than`; their parts cost money."""
        aborted = 0
        with errors(f"list multipart uploads in s3://{self.bucket}/{self.prefix} on"):
            for page in self.client.get_paginator("list_multipart_uploads").paginate(
                    Bucket=self.bucket, Prefix=f"{self.prefix}{SNAPSHOTS}"):
                for upload in page.get("Uploads", []):
                    if upload["Initiated"] < older_than:
                        self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                           UploadId=upload["UploadId"])
                        aborted += 1
        return aborted

    def probe(self) -> str:
        """Reach the bucket and list one key under the prefix; a line for `check`."""
        with errors("reach"):
            self.client.head_bucket(Bucket=self.bucket)
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=f"{self.prefix}{SNAPSHOTS}", MaxKeys=1)
        return f"{self.url}: reachable, listing allowed ({self.client.meta.endpoint_url})"


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "")) or str(
        exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


@contextlib.contextmanager
def errors(doing: str) -> Iterator[None]:
    """Turn boto3/botocore exceptions into one operator line: what failed, and what to check."""
    try:
        yield
    except RollbackError:
        raise
    except botocore.exceptions.NoCredentialsError:
        raise RemoteError(f"cannot {doing} the bucket: no AWS credentials (set AWS_ACCESS_KEY_ID and "
                          f"AWS_SECRET_ACCESS_KEY)") from None
    except botocore.exceptions.ClientError as exc:
        code = _code(exc)
        message = exc.response.get("Error", {}).get("Message", "") or str(exc)
        if code in _CREDENTIAL_CODES:
            raise RemoteError(f"cannot {doing} the bucket: credentials refused ({code}: {message}); check "
                              f"AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket's policy") from None
        if code == "NoSuchBucket":
            raise RemoteError(f"cannot {doing} the bucket: it does not exist ({message}); check "
                              f"BACKUP_REMOTE_URL and AWS_ENDPOINT_URL") from None
        raise RemoteError(f"cannot {doing} the bucket: {code}: {message}") from None
    except S3UploadFailedError as exc:  # boto3 wraps the ClientError of a managed upload in text
        text = str(exc)
        hint = "; check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY" if any(c in text for c in _CREDENTIAL_CODES) else ""
        raise RemoteError(f"cannot {doing} the bucket: {text}{hint}") from None
    except Boto3Error as exc:  # S3TransferFailedError of a managed download, and the like
        raise RemoteError(f"cannot {doing} the bucket: {type(exc).__name__}: {exc}") from None
    except (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectionClosedError,
            botocore.exceptions.ConnectTimeoutError, botocore.exceptions.ReadTimeoutError) as exc:
        raise RemoteError(f"cannot {doing} the bucket: endpoint unreachable ({exc})") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise RemoteError(f"cannot {doing} the bucket: {type(exc).__name__}: {exc}") from None
