"""Elliptic-curve key pairs for signing tests, made by the tests (never checked in)."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


def ec_keypair(directory: Path, name: str, curve: ec.EllipticCurve | None = None) -> tuple[Path, Path]:
    """(private PEM, public PEM) written into ``directory``."""
    key = ec.generate_private_key(curve or ec.SECP256R1())
    private = directory / f"{name}.pem"
    public = directory / f"{name}.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public
