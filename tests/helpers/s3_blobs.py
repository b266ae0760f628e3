"""Alter a stored blob behind the store's back, as a broken or hostile S3 would (tests of the sha256 checks)."""

from __future__ import annotations


def flip_bit_in_blob(s3_client, store, sha256: str) -> None:
    """Flip one bit in the middle of blob ``sha256`` in ``store``'s bucket (inside a tensor of a weights file, so
    its safetensors header still parses); same size, other bytes."""
    key = f"sha256/{sha256}"
    bucket = store.config.s3.bucket
    body = bytearray(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0x01
    s3_client.put_object(Bucket=bucket, Key=key, Body=bytes(body))
