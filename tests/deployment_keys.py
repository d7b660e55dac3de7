"""A signing key for the tests, configured the way a real deployment configures one.

Production commands refuse to start without ``evidence.signing_key``, and verifiers trust
only pinned keys. Tests that run them put :func:`signing_env` into the environment of
``stampless``: the private key in an environment variable the key reference names, and
its fingerprint pinned in ``evidence.trusted_keys``. One key per test session.
"""

from __future__ import annotations

import base64
import hashlib

from stampless.signing import Signer

SIGNER = Signer.generate()
KEY_VARIABLE = "STAMPLESS_TEST_SIGNING_KEY"
# What robot.toml pins: the SHA-256 of the raw public key (docs/evidence.md).
PIN = "sha256:" + hashlib.sha256(base64.b64decode(SIGNER.public_key_b64)).hexdigest()


def signing_env() -> dict[str, str]:
    """Environment variables that configure :data:`SIGNER` and pin its public key."""
    return {
        KEY_VARIABLE: SIGNER.private_b64().reveal(),
        "STAMPLESS__EVIDENCE__SIGNING_KEY": f"env:{KEY_VARIABLE}",
        "STAMPLESS__EVIDENCE__TRUSTED_KEYS": f'["{PIN}"]',
    }
