"""The instant tier: electronic certificates signed by their issuing department.

An e-certificate is a JSON *payload* signed with the issuer's Ed25519 key; the
signature is detached, over the payload's canonical JSON (keys sorted, no spaces,
UTF-8 kept as is), and the two travel together as an *envelope*::

    {"payload": {"format": "stampless-ecert/1", "issuer": "civil_affairs",
                 "type": "marriage_certificate", "serial": "...",
                 "issued_at": "2024-01-02T00:00:00+00:00",
                 "expires_at": "2034-01-02T00:00:00+00:00",
                 "fields": {"cert_no": "...", ...}},
     "signature": "<base64 of 64 bytes>"}

It reaches stampless as a file named by the request (``Request.ecert``) or as a QR code
printed on the scan, which holds ``stampless-ecert:`` followed by the base64url of the
envelope's canonical JSON (a business licence also carries a plain URL QR code: that
is not an e-certificate and is ignored).

Verification needs no browser and no OCR: the signature under the key registered for
the issuer in robot.toml (``[issuers.<id>] public_key``), the issuer and document type,
the validity period, the issuer's revocation list (a JSON file reloaded when it
changes), then the claim's fields against the signed ones.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
import threading
import unicodedata
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from loguru import logger
from pydantic import BaseModel, ConfigDict, ValidationError

from stampless._files import write_atomic
from stampless.errors import ConfigError, InputError, SystemFailure
from stampless.models import FieldResult, FieldStatus, Request, VerdictKind, utcnow

if TYPE_CHECKING:
    from PIL import Image

    from stampless.compare import Decision
    from stampless.config import Config, IssuerConfig

ECERT_FORMAT = "stampless-ecert/1"
QR_PREFIX = "stampless-ecert:"
MAX_ENVELOPE_BYTES = 64 * 1024
# Clocks of issuers and of this host differ a little; a certificate "issued" a few
# minutes in our future is still genuine.
CLOCK_SKEW = timedelta(minutes=5)


class EcertPayload(BaseModel):
    """The signed content of an e-certificate."""

    model_config = ConfigDict(extra="forbid")

    format: str
    issuer: str
    type: str
    serial: str
    issued_at: datetime
    expires_at: datetime | None = None
    fields: dict[str, str]


# -- canonical form and encodings ---------------------------------------------------------


def canonical_json(value: Any) -> bytes:
    """The bytes that are signed: sorted keys, no whitespace, UTF-8 (not \\u escapes)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


_COMPACT_V1 = 1


def to_qr_text(envelope: dict[str, Any]) -> str:
    """The compact form carried by a QR code.

    ``stampless-ecert:`` + base64url of: one version byte (1), the 64 signature bytes,
    then the payload's canonical JSON deflated. About half the size of the JSON
    envelope, so the code has fewer, larger modules and survives a blurred,
    low-resolution scan. (Plain JSON envelope text after the prefix is accepted too.)
    """
    payload, signature = parse_envelope(envelope)
    body = bytes([_COMPACT_V1]) + signature + zlib.compress(canonical_json(payload), 9)
    return QR_PREFIX + base64.urlsafe_b64encode(body).rstrip(b"=").decode("ascii")


def _from_compact(body: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError) as exc:
        raise MalformedEcert("its QR text is not valid base64url") from exc
    if raw.startswith(b"{"):
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise MalformedEcert("its QR text is not valid JSON") from exc
        if not isinstance(data, dict):
            raise MalformedEcert("it is not an envelope of payload and signature")
        return data
    if len(raw) < 66 or raw[0] != _COMPACT_V1:
        raise MalformedEcert("its QR text is not a known compact e-certificate version")
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(raw[65:], MAX_ENVELOPE_BYTES)
        if inflater.unconsumed_tail:
            raise MalformedEcert("it inflates to more than any e-certificate")
        payload = json.loads(text.decode("utf-8"))
    except (zlib.error, UnicodeDecodeError, ValueError) as exc:
        raise MalformedEcert("its QR payload cannot be inflated and read") from exc
    return {"payload": payload, "signature": base64.b64encode(raw[1:65]).decode("ascii")}


def is_ecert_text(text: str | bytes) -> bool:
    """True when a decoded QR text is an e-certificate (not, say, a URL)."""
    if isinstance(text, bytes):
        return text.startswith(QR_PREFIX.encode("ascii"))
    return text.startswith(QR_PREFIX)


class MalformedEcert(ValueError):
    """The envelope cannot be read at all (not JSON, wrong shape, bad base64)."""


def parse_envelope(envelope: bytes | str | dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """Read an envelope in any form (dict, JSON text, QR compact text) into payload, signature."""
    data: Any = envelope
    if isinstance(data, bytes):
        if len(data) > MAX_ENVELOPE_BYTES:
            raise MalformedEcert("it is larger than any e-certificate")
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedEcert("it is not UTF-8 text") from exc
    if isinstance(data, str):
        text = data.strip()
        if text.startswith(QR_PREFIX):
            data = _from_compact(text[len(QR_PREFIX) :])
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise MalformedEcert("it is not valid JSON") from exc
    if not isinstance(data, dict) or set(data) != {"payload", "signature"}:
        raise MalformedEcert("it is not an envelope of payload and signature")
    payload, signature = data["payload"], data["signature"]
    if not isinstance(payload, dict) or not isinstance(signature, str):
        raise MalformedEcert("its payload or signature has the wrong type")
    try:
        sig = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedEcert("its signature is not base64") from exc
    if len(sig) != 64:
        raise MalformedEcert("its signature is not 64 bytes long")
    return payload, sig


# -- keys ------------------------------------------------------------------------------------


def public_key_b64(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The raw public key in base64, the form robot.toml's ``public_key`` takes."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def save_private_key(key: Ed25519PrivateKey, path: Path) -> None:
    """Write a private key as PEM, readable by the owner only (0600 from the start)."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read an Ed25519 private key from a PEM file."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(
            f"{path}: not a readable Ed25519 private key; create one with "
            "'stampless fixtures issue-ecert --key-out DIR'."
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"{path}: the key is not Ed25519; e-certificates use Ed25519 keys.")
    return key


def ensure_issuer_key(key_dir: Path, issuer: str) -> tuple[Ed25519PrivateKey, bool]:
    """The issuer's key from ``<key_dir>/<issuer>.key``, created if missing (True if new)."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", issuer) or ".." in issuer:
        raise InputError(f"Issuer id {issuer!r} must be letters, digits, '_', '-' or '.'.")
    path = key_dir / f"{issuer}.key"
    if path.exists():
        return load_private_key(path), False
    key = Ed25519PrivateKey.generate()
    save_private_key(key, path)
    (key_dir / f"{issuer}.pub").write_text(public_key_b64(key) + "\n", encoding="ascii")
    return key, True


_public_keys: dict[tuple[str, str], Ed25519PublicKey] = {}


def load_public_key(issuer: IssuerConfig, root: Path) -> Ed25519PublicKey:
    """An issuer's public key from robot.toml: base64 of the raw 32 bytes, or a PEM path."""
    cache_key = (issuer.public_key, str(root))
    cached = _public_keys.get(cache_key)
    if cached is not None:
        return cached
    value = issuer.public_key.strip()
    key: Any
    try:
        raw = base64.b64decode(value, validate=True)
        if len(raw) != 32:
            raise ValueError("not 32 bytes")
        key = Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError):
        path = Path(value) if Path(value).is_absolute() else root / value
        try:
            key = serialization.load_pem_public_key(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(
                "An issuer's public_key in robot.toml is neither base64 of a raw Ed25519 key "
                "nor a readable PEM file; set it to the key the department published."
            ) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError("An issuer's public_key in robot.toml is not an Ed25519 key.")
    _public_keys[cache_key] = key
    return key


# -- issuing ---------------------------------------------------------------------------------


def sign_payload(private_key: Ed25519PrivateKey, payload: dict[str, Any]) -> dict[str, Any]:
    """Wrap a payload in an envelope with its detached signature."""
    signature = private_key.sign(canonical_json(payload))
    return {"payload": payload, "signature": base64.b64encode(signature).decode("ascii")}


def issue_ecert(
    private_key: Ed25519PrivateKey,
    issuer: str,
    doc_type: str,
    fields: dict[str, Any],
    *,
    serial: str | None = None,
    issued_at: datetime | None = None,
    expires_at: datetime | None = None,
    valid_days: float = 3650,
) -> dict[str, Any]:
    """Create a signed e-certificate envelope (for fixtures, tests and the demo)."""
    issued = issued_at or utcnow().replace(microsecond=0)
    expires = expires_at if expires_at is not None else issued + timedelta(days=valid_days)
    payload = {
        "format": ECERT_FORMAT,
        "issuer": issuer,
        "type": doc_type,
        "serial": serial or f"{issuer[:3].upper()}-{secrets.token_hex(6).upper()}",
        "issued_at": issued.isoformat(),
        "expires_at": expires.isoformat(),
        "fields": {str(k): str(v) for k, v in fields.items()},
    }
    return sign_payload(private_key, payload)


# -- revocation lists -------------------------------------------------------------------------


@dataclass(frozen=True)
class RevocationList:
    issuer: str
    updated_at: str | None
    revoked: frozenset[str]
    stamp: tuple[int, int]  # (mtime_ns, size) of the file it was read from


_revocations: dict[Path, RevocationList] = {}
_revocations_lock = threading.Lock()


def load_revocation_list(path: Path, issuer: str) -> RevocationList:
    """The serials revoked by ``issuer``, re-read only when the file's mtime or size changes.

    A list that cannot be read raises :class:`SystemFailure` (retried): without it a
    revoked certificate would pass.
    """
    try:
        st = path.stat()
    except OSError as exc:
        raise SystemFailure(
            f"The revocation list of {issuer} ({path}) cannot be read; restore the file "
            "or its refresh job, then retry."
        ) from exc
    stamp = (st.st_mtime_ns, st.st_size)
    with _revocations_lock:
        cached = _revocations.get(path)
        if cached is not None and cached.stamp == stamp:
            return cached
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("issuer") != issuer:
            raise ValueError("issuer differs")
        revoked = frozenset(str(s) for s in data.get("revoked", []))
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise SystemFailure(
            f"The revocation list {path} is not a valid list for {issuer} "
            '({"issuer", "updated_at", "revoked": [serials]}); fix the file, then retry.'
        ) from exc
    result = RevocationList(issuer, data.get("updated_at"), revoked, stamp)
    with _revocations_lock:
        _revocations[path] = result
    logger.debug("ecert: revocation list of {} loaded ({} serials)", issuer, len(revoked))
    return result


def _revocation_path(config: Config, issuer: IssuerConfig) -> Path | None:
    if issuer.revocation_list is None:
        return None
    p = issuer.revocation_list
    return p if p.is_absolute() else config.root / p


def refresh_revocations(config: Config) -> dict[str, int]:
    """Reload every issuer's revocation list now (the scheduled job); serials per issuer."""
    counts: dict[str, int] = {}
    for name, issuer in config.issuers.items():
        path = _revocation_path(config, issuer)
        if path is not None:
            counts[name] = len(load_revocation_list(path, name).revoked)
    return counts


def write_revocation_list(path: Path, issuer: str, revoked: list[str]) -> None:
    """Write a revocation list atomically (fixtures, tests, an issuer's sync job)."""
    data = {"issuer": issuer, "updated_at": utcnow().isoformat(), "revoked": sorted(revoked)}
    write_atomic(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")


# -- verification -----------------------------------------------------------------------------


def _norm(value: Any) -> str:
    """Compare values as printed: width, case and spacing do not matter; dates are ISO."""
    text = unicodedata.normalize("NFKC", str(value)).strip().upper()
    text = re.sub(r"\s+", "", text)
    m = re.fullmatch(r"(\d{4})[年./-](\d{1,2})[月./-](\d{1,2})日?", text)
    if m:
        return f"{m[1]}-{int(m[2]):02d}-{int(m[3]):02d}"
    m = re.fullmatch(r"(\d{4})[年./-](\d{1,2})月?", text)
    if m:
        return f"{m[1]}-{int(m[2]):02d}"
    return text


def _decision(verdict: VerdictKind, fields: list[FieldResult], reasons: list[str]) -> Decision:
    from stampless.compare import Decision

    return Decision(verdict=verdict, fields=fields, reasons=reasons)


def _reject(reason: str) -> Decision:
    return _decision(VerdictKind.mismatch, [], [reason])


def verify_ecert(
    envelope: bytes | str | dict[str, Any],
    *,
    config: Config,
    doc_type: str,
    claim: dict[str, Any],
    now: datetime | None = None,
) -> Decision:
    """Verify an e-certificate and compare it with the claim; no browser, no OCR.

    Returns a Decision: ``verified`` when the signature, issuer, type, validity period,
    revocation list and every claimed field agree; ``mismatch`` (with the reason) when
    any of them does not; ``needs_review`` when a claimed field is not on the
    certificate. Raises :class:`SystemFailure` when a revocation list cannot be read.
    """
    now = now or utcnow()
    try:
        payload, signature = parse_envelope(envelope)
    except MalformedEcert as exc:
        return _reject(f"The e-certificate cannot be read: {exc}.")
    issuer_id = payload.get("issuer")
    issuer = config.issuers.get(issuer_id) if isinstance(issuer_id, str) else None
    if issuer is None or not isinstance(issuer_id, str):
        return _reject(
            f"The e-certificate names issuer {issuer_id!r}, which is not a department "
            "registered in robot.toml [issuers]."
        )
    try:
        load_public_key(issuer, config.root).verify(signature, canonical_json(payload))
    except InvalidSignature:
        return _reject(
            f"The e-certificate's signature does not verify under {issuer_id}'s key: it was "
            "altered or not issued by that department."
        )
    try:
        cert = EcertPayload.model_validate(payload)
    except ValidationError:
        return _reject("The e-certificate is signed but its content is not a valid payload.")
    if cert.format != ECERT_FORMAT:
        return _reject(f"The e-certificate's format {cert.format!r} is not {ECERT_FORMAT}.")
    if cert.type != doc_type:
        return _reject(f"The e-certificate is a {cert.type}, but the request is a {doc_type}.")
    if issuer.types and doc_type not in issuer.types:
        return _reject(f"{issuer_id} is not registered as an issuer of {doc_type}.")
    if cert.issued_at.tzinfo is None or (cert.expires_at and cert.expires_at.tzinfo is None):
        return _reject("The e-certificate's dates carry no time zone.")
    if cert.issued_at > now + CLOCK_SKEW:
        return _reject(f"The e-certificate claims to be issued in the future ({cert.issued_at}).")
    if cert.expires_at is not None and cert.expires_at <= now:
        return _reject(f"The e-certificate expired on {cert.expires_at.date().isoformat()}.")
    rl_path = _revocation_path(config, issuer)
    if rl_path is not None and cert.serial in load_revocation_list(rl_path, issuer_id).revoked:
        return _reject(f"The e-certificate {cert.serial} has been revoked by {issuer_id}.")

    fields: list[FieldResult] = []
    reasons: list[str] = []
    verdict = VerdictKind.verified
    for name, claimed in claim.items():
        signed = cert.fields.get(name)
        reason: str | None = None
        if signed is None:
            status = FieldStatus.missing
            reason = f"{name} is not on the e-certificate; a person must check it."
            if verdict is VerdictKind.verified:
                verdict = VerdictKind.needs_review
        elif _norm(signed) == _norm(claimed):
            status = FieldStatus.match
        else:
            status = FieldStatus.mismatch
            reason = f"{name} differs from the signed e-certificate."
            verdict = VerdictKind.mismatch
        if reason is not None:
            reasons.append(reason)
        fields.append(
            FieldResult(
                name=name,
                claimed=None if claimed is None else str(claimed),
                ocr=None,
                record=signed,
                status=status,
                confidence=1.0,
                reason=reason,
            )
        )
    if verdict is VerdictKind.verified:
        reasons.append(f"Signed by {issuer_id}, serial {cert.serial}, valid and not revoked.")
    return _decision(verdict, fields, reasons)


# -- QR codes on scans -------------------------------------------------------------------------


def _qr_texts(image: Any, binarizer: Any = None) -> list[bytes]:
    import zxingcpp

    kwargs: dict[str, Any] = {} if binarizer is None else {"binarizer": binarizer}
    found = zxingcpp.read_barcodes(
        image, formats=zxingcpp.barcode_formats_from_str("QRCode"), **kwargs
    )
    return [bytes(b.bytes) for b in found if b.valid]


def _open_gray(image_path: Path, *, half: bool = False) -> Image.Image:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(image_path) as im:
            if half:
                # JPEG decodes straight to half size (DCT scaling): several times faster.
                im.draft("L", (im.width // 2, im.height // 2))
            return ImageOps.exif_transpose(im).convert("L")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise InputError(f"{image_path}: not a readable image; send a JPEG or PNG scan.") from exc


def find_ecert_in_scan(image_path: Path) -> bytes | None:
    """The e-certificate text of a QR code on a scan, or None when there is none.

    Tries a fast half-size decode first, then the full image, a global binarizer
    (uneven light), and an enlarged copy (modules too small at low resolution), because
    one pass does not read every photo. QR codes whose text is not an e-certificate (a
    licence's URL code) are ignored.
    """
    import numpy as np
    import zxingcpp
    from PIL import Image

    def found(image: Any, binarizer: Any = None) -> bytes | None:
        for text in _qr_texts(np.asarray(image), binarizer):
            if is_ecert_text(text):
                return text
        return None

    half = _open_gray(image_path, half=True)
    tried_half = max(half.size) >= 1000
    if tried_half:
        # A large JPEG decoded at half size (a PNG comes whole): the cheap first try.
        text = found(half)
        if text is not None:
            return text
    gray = _open_gray(image_path)
    if not tried_half or gray.size != half.size:
        text = found(gray)
        if text is not None:
            return text
    text = found(gray, zxingcpp.Binarizer.GlobalHistogram)
    if text is not None:
        return text
    w, h = gray.size
    if max(w, h) <= 3000:
        return found(gray.resize((w * 3 // 2, h * 3 // 2), Image.Resampling.BICUBIC))
    return None


def make_qr(envelope: dict[str, Any], *, scale: int = 3) -> Image.Image:
    """A QR code image (PIL, mode L) carrying the envelope in its compact form."""
    import zxingcpp
    from PIL import Image

    code = zxingcpp.create_barcode(
        to_qr_text(envelope), zxingcpp.BarcodeFormat.QRCode, ec_level="M"
    )
    import numpy as np

    return Image.fromarray(np.asarray(code.to_image(scale=scale)))


def stamp_qr(
    image: Image.Image,
    envelope: dict[str, Any],
    *,
    corner: str = "bottom-left",
    share: float = 0.24,
) -> Image.Image:
    """A copy of a page with the e-certificate QR code printed in one corner.

    ``share`` is the code's side as a share of the page's short side.
    """
    from PIL import Image

    qr = make_qr(envelope, scale=1)
    side = max(120, int(min(image.size) * share))
    qr = qr.resize((side, side), Image.Resampling.NEAREST)
    out = image.copy()
    margin = int(image.width * 0.04)
    x = margin if "left" in corner else image.width - side - margin
    y = margin if "top" in corner else image.height - side - margin
    out.paste(qr.convert(out.mode), (x, y))
    return out


# -- the instant tier for the pipeline ---------------------------------------------------------


def verify_instant(request: Request, *, base_dir: Path, config: Config) -> Decision:
    """Verify a request of the instant tier from its e-certificate file or its scan's QR.

    A scan without a readable e-certificate QR code goes to a person (``needs_review``).
    """
    ecert_file = request.ecert_path(base_dir)
    if ecert_file is not None:
        try:
            if ecert_file.stat().st_size > MAX_ENVELOPE_BYTES:
                raise InputError(f"{ecert_file}: too large for an e-certificate.")
            data = ecert_file.read_bytes()
        except OSError as exc:
            raise InputError(
                f"{ecert_file}: the e-certificate file cannot be read; check the request's "
                "'ecert' path."
            ) from exc
        return verify_ecert(data, config=config, doc_type=request.type, claim=request.claim)
    scan = request.scan_path(base_dir)
    if scan is None:
        raise InputError(
            f"Request {request.id} of the instant tier has neither 'ecert' nor 'scan'; "
            "attach the e-certificate or its scan."
        )
    text = find_ecert_in_scan(scan)
    if text is None:
        return _decision(
            VerdictKind.needs_review,
            [],
            ["No readable e-certificate QR code on the scan; a person must check it."],
        )
    return verify_ecert(text, config=config, doc_type=request.type, claim=request.claim)
