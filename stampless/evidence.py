"""Evidence bundles: every file behind a verdict, listed with its SHA-256 and signed.

A bundle is built in ``<evidence_dir>/.<request_id>.partial/`` and :meth:`EvidenceBundle.seal`
renames it to ``<evidence_dir>/<request_id>/`` in one step, so a reader never sees a
half-written bundle, and a sealed bundle is never rewritten. A crash leaves the partial
folder. Each bundle belongs to one run of its request (``run``: the queue item's, or one
``stampless verify``): opening it again in the same run continues it (retries add to it),
while another run moves the old partial folder aside to ``<evidence_dir>/.abandoned/``
and starts afresh, so a bundle never holds the failures of an earlier run.

``manifest.json`` (format ``stampless-evidence/1``, see docs/evidence.md)::

    {"format": "stampless-evidence/1", "request_id": "...",
     "files": [{"name", "sha256", "size", "kind", "caption", "created_at"}, ...],
     "meta": {...}, "stampless_version": "...", "started_at": "...", "finished_at": "...",
     "signature": {"alg": "Ed25519", "key_id", "public_key", "value"}}

The signature covers the canonical JSON of the manifest without ``signature``
(:func:`canonical_json`). :func:`verify_bundle` recomputes everything, for a folder or a
zip made by :func:`export_bundle`, and names each file that differs.

What a bundle keeps: what a reviewer needs to judge the verdict (the scan, the record,
full field values). What it never keeps: passwords, TOTP seeds, keys (``set_meta``
refuses keys that name them and values that are known secrets).

Size: the scan is kept byte for byte; screenshots are stored as lossless WebP, the image
OCR read as WebP at quality :data:`PAGE_QUALITY`, and the intermediate preprocessing
steps only where they explain a doubt (:meth:`EvidenceBundle.compact_images`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal, NamedTuple

from loguru import logger
from pydantic import BaseModel

from stampless._files import fsync_dir, write_atomic
from stampless._version import __version__
from stampless.errors import InputError, StamplessError
from stampless.models import check_request_id, utcnow
from stampless.signing import (
    ALG,
    Signer,
    TrustedKeys,
    canonical_json,
    document_problems,
    key_id_of,
    load_public_key,
    verify_signature,
)
from stampless.vault import Secret, known_secret_values

FORMAT = "stampless-evidence/1"
MANIFEST = "manifest.json"
STATE = ".bundle-state.json"
DIALOGS = "dialogs.json"
PARTIAL_SUFFIX = ".partial"

Kind = Literal[
    "request",
    "scan",
    "preprocessed",
    "ocr",
    "record",
    "screenshot",
    "dialog",
    "download",
    "trace",
    "comparison",
    "verdict",
    "other",
]
KINDS: frozenset[str] = frozenset(Kind.__args__)  # type: ignore[attr-defined]
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SECRET_META = re.compile(r"password|passwd|secret|token|totp|private|api_?key", re.IGNORECASE)
_HASH_CHUNK = 1 << 20
# The image OCR read, whose coordinates the word boxes are in (any image suffix).
OCR_INPUT_STEM = "ocr-input"
# Lossy WebP quality of page images: at 80 the scan's print stays legible at 1:1
# (docs/evidence.md, "Size").
PAGE_QUALITY = 80


class BundleExists(InputError):
    """The request already has a sealed bundle; a verdict's evidence is never rewritten."""


class BundleError(StamplessError):
    """A bundle could not be written (disk full, permissions)."""


def sha256_file(path: Path) -> tuple[str, int]:
    """SHA-256 hex and size of a file, read in chunks."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def check_name(name: str) -> str:
    """Validate a file name inside a bundle (``a.png``, ``screenshots/01-x.png``).

    Each part holds only letters, digits, ``.``, ``_`` and ``-`` and starts with a letter
    or digit, so no ``..``, no absolute paths, no hidden files; at most 4 levels.
    """
    parts = PurePosixPath(name).parts if name else ()
    if (
        not parts
        or "\\" in name
        or name.startswith("/")
        or len(parts) > 4
        # A part starts with a letter or digit, so "." and ".." cannot occur.
        or any(not _PART.match(p) for p in parts)
        or name == MANIFEST
        or "/".join(parts) != name
    ):
        raise InputError(
            f"Evidence file name {name!r} is not allowed; use letters, digits, '.', '_', '-' "
            "and '/' between folders, without '..' (and not manifest.json)."
        )
    return name


def slugify(text: str, *, max_len: int = 40) -> str:
    """A file-name-safe slug of a caption (ASCII letters and digits, '-' between)."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
    return slug[:max_len].strip("-") or "shot"


def _json_default(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Secret):
        raise TypeError("a Secret cannot be written to an evidence bundle")
    raise TypeError(f"cannot write {obj.__class__.__name__} as JSON")


def _dumps(obj: Any) -> bytes:
    if isinstance(obj, BaseModel):
        return obj.model_dump_json(indent=2).encode()
    return json.dumps(obj, ensure_ascii=False, indent=2, default=_json_default).encode()


class SealedBundle(NamedTuple):
    """A sealed bundle: its folder and the SHA-256 of its manifest.json bytes."""

    path: Path
    manifest_sha256: str


@dataclass
class _FileEntry:
    kind: str
    caption: str | None
    created_at: str


@dataclass
class _State:
    request_id: str
    started_at: str
    files: dict[str, _FileEntry] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    dialogs: list[dict[str, Any]] = field(default_factory=list)
    screenshots: int = 0
    run: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "run": self.run,
            "started_at": self.started_at,
            "files": {k: vars(v) for k, v in self.files.items()},
            "meta": self.meta,
            "dialogs": self.dialogs,
            "screenshots": self.screenshots,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _State:
        return cls(
            request_id=data["request_id"],
            started_at=data["started_at"],
            files={k: _FileEntry(**v) for k, v in data.get("files", {}).items()},
            meta=dict(data.get("meta", {})),
            dialogs=list(data.get("dialogs", [])),
            screenshots=int(data.get("screenshots", 0)),
            run=data.get("run"),
        )


def _webp_bytes(image: Any, *, lossless: bool) -> bytes:
    """A PIL image as WebP: lossless for screenshots, :data:`PAGE_QUALITY` for pages."""
    import io

    out = io.BytesIO()
    if lossless:
        # method 4, effort 0: as small as the slowest setting, in a tenth of its time
        image.save(out, format="WEBP", lossless=True, method=4, quality=0)
    else:
        image.save(out, format="WEBP", quality=PAGE_QUALITY, method=0)
    return out.getvalue()


def _kind_by_folder(name: str) -> str:
    top = name.split("/", 1)[0]
    return {
        "screenshots": "screenshot",
        "preprocessed": "preprocessed",
        "downloads": "download",
        "trace": "trace",
        "traces": "trace",
    }.get(top, "trace" if name.endswith("trace.zip") else "other")


def _webp_supported() -> bool:
    from PIL import features

    if features.check("webp"):
        return True
    logger.warning("evidence: this Pillow cannot write WebP; images are kept as PNG")
    return False


class EvidenceBundle:
    """The evidence of one request while it is being gathered. Open with :meth:`open`.

    Not thread-safe: one request is handled by one worker at a time (the queue's lease).
    """

    def __init__(self, evidence_dir: Path, state: _State, work: Path) -> None:
        self.evidence_dir = evidence_dir
        self.request_id = state.request_id
        self.work_dir = work
        self._state = state
        self._sealed: SealedBundle | None = None
        # Preprocessing steps held in memory until compact_images knows whether to keep them.
        self._held: list[tuple[str, Any]] = []

    # ------------------------------------------------------------------ lifecycle

    @staticmethod
    def final_dir(evidence_dir: Path, request_id: str) -> Path:
        return Path(evidence_dir) / request_id

    @staticmethod
    def partial_dir(evidence_dir: Path, request_id: str) -> Path:
        return Path(evidence_dir) / f".{request_id}{PARTIAL_SUFFIX}"

    @classmethod
    def exists(cls, evidence_dir: Path, request_id: str) -> bool:
        """True when the request already has a sealed bundle."""
        return (cls.final_dir(evidence_dir, request_id) / MANIFEST).is_file()

    @classmethod
    def open(
        cls,
        evidence_dir: Path,
        request_id: str,
        *,
        started_at: datetime | None = None,
        run: str | None = None,
    ) -> EvidenceBundle:
        """Start (or, after a crash or a retry, continue) the bundle of ``request_id``.

        ``run`` names the run the evidence belongs to: a partial bundle of another run is
        moved to ``<evidence_dir>/.abandoned/`` and a new one started (None: continue
        whatever partial bundle there is). Raises :class:`BundleExists` when the request
        already has a sealed bundle.
        """
        try:
            check_request_id(request_id)
        except ValueError as exc:
            raise InputError(f"Request id {request_id!r} is not allowed: {exc}.") from None
        evidence_dir = Path(evidence_dir)
        if cls.final_dir(evidence_dir, request_id).exists():
            raise BundleExists(
                f"Request {request_id} already has sealed evidence in {evidence_dir}; "
                "a verdict's evidence is never rewritten, use a new request id."
            )
        work = cls.partial_dir(evidence_dir, request_id)
        try:
            work.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BundleError(
                f"Cannot create the evidence folder {work} ({exc.strerror}); check the disk "
                "and permissions of evidence.path."
            ) from exc
        state_file = work / STATE
        state: _State | None = None
        if state_file.is_file():
            try:
                state = _State.from_json(json.loads(state_file.read_text(encoding="utf-8")))
            except (ValueError, KeyError, TypeError):
                logger.warning("evidence: partial state of {} unreadable; rebuilt", request_id)
        if (
            run is not None
            and (state is not None or any(work.iterdir()))
            and (state is None or state.run != run)
        ):
            cls._abandon(evidence_dir, request_id, work)
            work.mkdir(parents=True, exist_ok=True)
            state = None
        elif state is not None:
            logger.info("evidence: continuing the partial bundle of {}", request_id)
        if state is None:
            start = (started_at or utcnow()).isoformat()
            state = _State(request_id=request_id, started_at=start, run=run)
        bundle = cls(evidence_dir, state, work)
        bundle._save_state()
        return bundle

    @staticmethod
    def abandoned_dir(evidence_dir: Path) -> Path:
        """Where the partial bundles of earlier runs are moved (never sealed, never listed)."""
        return Path(evidence_dir) / ".abandoned"

    @classmethod
    def _abandon(cls, evidence_dir: Path, request_id: str, work: Path) -> None:
        stamp = utcnow().strftime("%Y%m%dT%H%M%S%f")
        target = cls.abandoned_dir(evidence_dir) / f"{request_id}.{stamp}"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            work.rename(target)
        except OSError as exc:
            raise BundleError(
                f"Cannot move the partial evidence of an earlier run of {request_id} aside "
                f"({exc.strerror}); check the permissions of {evidence_dir}."
            ) from exc
        logger.info(
            "evidence: the partial bundle of an earlier run of {} moved to {}", request_id, target
        )

    def _save_state(self) -> None:
        state = json.dumps(self._state.to_json(), ensure_ascii=False)
        write_atomic(self.work_dir / STATE, state, durable=False)  # seal() makes it durable

    def _check_open(self) -> None:
        if self._sealed is not None:
            raise BundleExists(
                f"The evidence of {self.request_id} is sealed; nothing more can be added."
            )

    # ------------------------------------------------------------------ adding files

    def path(self, name: str) -> Path:
        """A path inside the bundle for a writer (e.g. Playwright); call :meth:`note_file` after.

        Folders are created. Files written here but never noted are still sealed into the
        manifest (kind guessed from the folder), so nothing on disk goes unlisted.
        """
        self._check_open()
        check_name(name)
        target = self.work_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def note_file(self, name: str, *, kind: str, caption: str | None = None) -> Path:
        """Record the kind and caption of a file written through :meth:`path`."""
        self._check_open()
        check_name(name)
        if kind not in KINDS:
            raise ValueError(f"unknown evidence kind {kind!r}; one of {sorted(KINDS)}")
        self._state.files[name] = _FileEntry(kind, caption, utcnow().isoformat())
        self._save_state()
        return self.work_dir / name

    def add_bytes(self, name: str, data: bytes, *, kind: str, caption: str | None = None) -> Path:
        """Write ``data`` as ``name`` and record it."""
        try:
            write_atomic(self.path(name), data, durable=False)  # seal() syncs the folder
        except OSError as exc:
            raise BundleError(
                f"Cannot write {name} into the evidence of {self.request_id} ({exc.strerror}); "
                "check free disk space."
            ) from exc
        return self.note_file(name, kind=kind, caption=caption)

    def add_file(
        self, src: Path, name: str | None = None, *, kind: str, caption: str | None = None
    ) -> Path:
        """Copy ``src`` into the bundle as ``name`` (default: its file name)."""
        src = Path(src)
        name = name or src.name
        target = self.path(name)
        try:
            shutil.copyfile(src, target)
        except OSError as exc:
            raise BundleError(
                f"Cannot copy {src.name} into the evidence of {self.request_id} "
                f"({exc.strerror}); check that it exists and the disk has space."
            ) from exc
        return self.note_file(name, kind=kind, caption=caption)

    def add_json(self, name: str, obj: Any, *, kind: str, caption: str | None = None) -> Path:
        """Write ``obj`` (a pydantic model, dict or list) as indented UTF-8 JSON."""
        return self.add_bytes(name, _dumps(obj), kind=kind, caption=caption)

    def screenshot_path(self, caption: str) -> Path:
        """A numbered path ``screenshots/NN-<slug>.png`` with its caption and time recorded."""
        self._check_open()
        folder = self.work_dir / "screenshots"
        # After a crash that lost the state file, continue after the shots on disk.
        on_disk = (
            len([p for p in folder.iterdir() if p.suffix in (".png", ".webp")])
            if (folder.is_dir())
            else 0
        )
        self._state.screenshots = max(self._state.screenshots, on_disk) + 1
        name = f"screenshots/{self._state.screenshots:02d}-{slugify(caption)}.png"
        path = self.path(name)
        self.note_file(name, kind="screenshot", caption=caption)
        return path

    def add_dialog(self, kind: str, message: str, accepted: bool) -> None:
        """Record a browser dialog (alert, confirm, prompt) the robot met, in dialogs.json."""
        self._check_open()
        self._state.dialogs.append(
            {
                "kind": kind,
                "message": message,
                "accepted": bool(accepted),
                "at": utcnow().isoformat(),
            }
        )
        self.add_json(DIALOGS, self._state.dialogs, kind="dialog", caption="browser dialogs")

    def set_meta(self, **kv: Any) -> None:
        """Record facts about the run: robot version, selector map version/sha, system,
        account name. Never a password: keys naming secrets and known secret values are
        refused."""
        self._check_open()
        secrets = known_secret_values()
        for key, value in kv.items():
            if _SECRET_META.search(key):
                raise ValueError(f"evidence meta may not hold secrets (key {key!r})")
            if isinstance(value, Secret) or (isinstance(value, str) and value in secrets):
                raise ValueError(f"evidence meta {key!r} holds a secret value; leave it out")
            self._state.meta[key] = json.loads(json.dumps(value, default=_json_default))
        self._save_state()

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self._state.meta)

    # ------------------------------------------------------------------ size

    def hold_steps(self, steps: list[tuple[str, Any]]) -> None:
        """Images of a reading (``(file name, PIL image)``, :attr:`OcrResult.pending_steps`)
        into ``preprocessed/``, each encoded once in its final form. The image OCR read is
        written now (a retry that reuses ocr.json still has it); the other steps are held
        for :meth:`compact_images`, which writes them only if it keeps the steps (a clear
        verdict costs no encoding of files it would remove; a retry loses them)."""
        webp = _webp_supported()
        self._held = []
        for name, image in steps:
            if PurePosixPath(name).stem == OCR_INPUT_STEM:
                self._write_image(f"preprocessed/{name}", image, webp=webp)
            else:
                self._held.append((f"preprocessed/{name}", image))

    def compact_images(self, *, keep_steps: bool) -> None:
        """Re-encode the bundle's PNG images smaller, before sealing.

        Screenshots become lossless WebP (the same pixels, a third of the size); the
        image OCR read becomes WebP at :data:`PAGE_QUALITY`; the other preprocessing
        steps are removed unless ``keep_steps`` (a mismatch, a review, or
        ``evidence.keep_steps``), when they are kept as WebP too, except a step that is
        the very image OCR read (the last step, unless the page was turned): it would be
        the same file twice. The scan itself and every other file are left as they
        are. CPU-bound: call it off the event loop.
        """
        self._check_open()
        held, self._held = self._held, []
        webp = _webp_supported()
        for name, image in held if keep_steps else []:
            self._write_image(name, image, webp=webp)
        if not webp:
            return
        for name in list(self._walk()):
            if not name.lower().endswith(".png"):
                continue
            entry = self._state.files.get(name)
            kind = entry.kind if entry is not None else _kind_by_folder(name)
            if kind == "screenshot":
                self._reencode(name, lossless=True)
            elif kind == "preprocessed":
                if keep_steps or PurePosixPath(name).stem == OCR_INPUT_STEM:
                    self._reencode(name, lossless=False)
                else:
                    self._remove(name)
        if keep_steps:
            self._remove_copies_of_ocr_input()
        self._save_state()

    def _remove(self, name: str) -> None:
        (self.work_dir / name).unlink()
        self._state.files.pop(name, None)

    def _remove_copies_of_ocr_input(self) -> None:
        steps = [n for n in self._walk() if _kind_by_folder(n) == "preprocessed"]
        read = [n for n in steps if PurePosixPath(n).stem == OCR_INPUT_STEM]
        if len(read) != 1:
            return
        content = (self.work_dir / read[0]).read_bytes()
        for name in steps:
            path = self.work_dir / name
            same_size = path.stat().st_size == len(content)
            if name != read[0] and same_size and path.read_bytes() == content:
                self._remove(name)

    def _write_image(self, name: str, image: Any, *, webp: bool) -> None:
        """A held page image (``name`` ends in .png) written as lossy WebP, or as PNG
        where Pillow has no WebP."""
        if not webp:
            image.save(self.path(name), compress_level=1)
            self.note_file(name, kind="preprocessed")
            return
        target = str(PurePosixPath(name).with_suffix(".webp"))
        write_atomic(self.path(target), _webp_bytes(image, lossless=False), durable=False)
        self.note_file(target, kind="preprocessed")

    def _reencode(self, name: str, *, lossless: bool) -> None:
        """``name`` (a PNG) as WebP under the same name with ``.webp``; kind and caption kept."""
        from PIL import Image

        source = self.work_dir / name
        target = str(PurePosixPath(name).with_suffix(".webp"))
        with Image.open(source) as image:
            data = _webp_bytes(image, lossless=lossless)
        write_atomic(self.work_dir / target, data, durable=False)
        source.unlink()
        entry = self._state.files.pop(name, None)
        self._state.files[target] = entry or _FileEntry(
            _kind_by_folder(name), None, utcnow().isoformat()
        )

    # ------------------------------------------------------------------ sealing

    def _walk(self) -> Iterator[str]:
        for dirpath, dirnames, filenames in os.walk(self.work_dir):
            dirnames.sort()
            rel_dir = Path(dirpath).relative_to(self.work_dir)
            for fn in sorted(filenames):
                rel = (rel_dir / fn).as_posix()
                if rel in (STATE, MANIFEST) or fn.startswith("."):
                    continue
                yield rel

    def seal(
        self, signer: Signer, *, verdict: dict[str, Any] | BaseModel | None = None
    ) -> SealedBundle:
        """Write verdict.json (if given) and the signed manifest, then move into place.

        Returns the final folder and the SHA-256 of manifest.json. Raises
        :class:`BundleExists` if another worker sealed this request first.
        """
        if self._sealed is not None:
            return self._sealed
        # The pipeline compacts before (off the event loop, choosing keep_steps); for
        # other sealers this is where PNG screenshots become WebP.
        self.compact_images(keep_steps=True)
        if verdict is not None:
            self.add_json("verdict.json", verdict, kind="verdict")
        final = self.final_dir(self.evidence_dir, self.request_id)
        if final.exists():
            raise BundleExists(
                f"Request {self.request_id} was sealed by another worker; its evidence is kept "
                "as it was."
            )
        files: list[dict[str, Any]] = []
        on_disk = set(self._walk())
        for name in sorted(set(self._state.files) - on_disk):
            logger.warning("evidence: {} was announced but never written; left out", name)
        for name in sorted(on_disk):
            entry = self._state.files.get(name)
            if entry is None:
                entry = _FileEntry(_kind_by_folder(name), None, utcnow().isoformat())
            path = self.work_dir / name
            if path.is_symlink() or not path.is_file():
                raise BundleError(
                    f"Evidence file {name} of {self.request_id} is not a regular file; "
                    "write files, not links, into a bundle."
                )
            digest, size = sha256_file(path)
            # fsync before the rename, so a sealed bundle's files are on disk.
            with path.open("rb") as f:
                os.fsync(f.fileno())
            files.append(
                {
                    "name": name,
                    "sha256": digest,
                    "size": size,
                    "kind": entry.kind,
                    "caption": entry.caption,
                    "created_at": entry.created_at,
                }
            )
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "request_id": self.request_id,
            "files": files,
            "meta": self._state.meta,
            "stampless_version": __version__,
            "started_at": self._state.started_at,
            "finished_at": utcnow().isoformat(),
        }
        manifest["signature"] = {
            "alg": ALG,
            "key_id": signer.key_id,
            "public_key": signer.public_key_b64,
            "value": base64.b64encode(signer.sign(canonical_json(manifest))).decode(),
        }
        data = json.dumps(manifest, ensure_ascii=False, indent=2).encode() + b"\n"
        manifest_path = self.work_dir / MANIFEST
        with manifest_path.open("wb") as f:
            f.write(data)
            os.fsync(f.fileno())
        (self.work_dir / STATE).unlink(missing_ok=True)
        for stray in self.work_dir.rglob(".*"):
            # Temporary files of interrupted writes would be unlisted extras.
            if stray.is_file():
                stray.unlink()
        fsync_dir(self.work_dir)
        try:
            # rename() of a folder onto an existing non-empty folder fails, so two
            # workers sealing the same request cannot both win.
            self.work_dir.rename(final)
        except OSError as exc:
            raise BundleExists(
                f"Request {self.request_id} was sealed by another worker; its evidence is kept "
                "as it was."
            ) from exc
        fsync_dir(self.evidence_dir)
        self._sealed = SealedBundle(final, hashlib.sha256(data).hexdigest())
        logger.info(
            "evidence: sealed {} ({} files, key {})", self.request_id, len(files), signer.key_id
        )
        return self._sealed


# --------------------------------------------------------------------------- verification


@dataclass
class Problem:
    """One reason a bundle does not verify."""

    kind: Literal["changed", "missing", "extra", "manifest", "signature", "untrusted", "verdict"]
    name: str | None
    detail: str

    def __str__(self) -> str:
        return (
            f"{self.kind}: {self.name}: {self.detail}"
            if self.name
            else f"{self.kind}: {self.detail}"
        )


@dataclass
class VerifyReport:
    """The outcome of :func:`verify_bundle`; ``ok`` only when every check holds."""

    source: str
    problems: list[Problem] = field(default_factory=list)
    request_id: str | None = None
    key_id: str | None = None
    files_checked: int = 0
    manifest: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


class _Source:
    """Uniform read access to a bundle folder or a zip of one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        self.prefix = ""
        if path.is_file():
            try:
                self.zip = zipfile.ZipFile(path)
            except zipfile.BadZipFile:
                raise InputError(f"{path} is not a zip file or a bundle folder.") from None
            names = [n for n in self.zip.namelist() if not n.endswith("/")]
            manifests = [n for n in names if n.rsplit("/", 1)[-1] == MANIFEST]
            top = min(manifests, key=lambda n: n.count("/"), default=None)
            self.prefix = top[: -len(MANIFEST)] if top else ""

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()

    def names(self) -> set[str]:
        if self.zip is not None:
            return {
                n[len(self.prefix) :]
                for n in self.zip.namelist()
                if n.startswith(self.prefix) and not n.endswith("/")
            }
        out: set[str] = set()
        for dirpath, dirs, files in os.walk(self.path):
            # os.walk does not follow links to folders; list them so they show up as extras.
            links = [d for d in dirs if (Path(dirpath) / d).is_symlink()]
            for fn in files + links:
                out.add((Path(dirpath) / fn).relative_to(self.path).as_posix())
        return out

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        if self.zip is not None:
            with self.zip.open(self.prefix + name) as f:
                yield f
        else:
            p = self.path / name
            if p.is_symlink():
                raise FileNotFoundError(name)
            with p.open("rb") as f:
                yield f

    def hash(self, name: str) -> tuple[str, int]:
        h = hashlib.sha256()
        size = 0
        with self.open(name) as f:
            while chunk := f.read(_HASH_CHUNK):
                h.update(chunk)
                size += len(chunk)
        return h.hexdigest(), size


Trust = TrustedKeys | list[str] | None


def _trust(trusted_keys: Trust) -> TrustedKeys | None:
    if trusted_keys is None or isinstance(trusted_keys, TrustedKeys):
        return trusted_keys
    return TrustedKeys.of(trusted_keys)


def verify_bundle(
    path: Path, *, trusted_keys: Trust = None, verdict: Path | None = None
) -> VerifyReport:
    """Recompute every hash and check the signature of a bundle folder or zip.

    Problems found: a file changed (hash or size), missing, an unexpected extra file, a
    manifest that was edited (the signature fails), or a signature by a key that is not
    in ``trusted_keys`` (when given: a :class:`~stampless.signing.TrustedKeys` or base64
    public keys; an empty one trusts nothing). Files are still checked after a bad
    signature, so the report names everything that differs. With ``verdict`` (the outbox
    file of the same request) the verdict is checked too: see :func:`verdict_problems`.
    """
    path = Path(path)
    report = VerifyReport(source=str(path))
    if not path.exists():
        raise InputError(f"{path} does not exist; give a request id, a bundle folder or a zip.")
    src = _Source(path)
    try:
        _verify(src, report, _trust(trusted_keys))
        if verdict is not None and report.manifest is not None:
            with src.open(MANIFEST) as f:
                manifest_sha256 = hashlib.sha256(f.read()).hexdigest()
            bundle_verdict = _read_member(src, "verdict.json")
            report.problems += verdict_problems(
                verdict,
                _trust(trusted_keys),
                manifest_sha256=manifest_sha256,
                bundle_verdict=bundle_verdict,
            )
    finally:
        src.close()
    return report


def _read_member(src: _Source, name: str) -> dict[str, Any] | None:
    try:
        with src.open(name) as f:
            data = json.loads(f.read())
    except (OSError, KeyError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# What the outbox verdict must share with the bundle's verdict.json (the outbox copy adds
# evidence, manifest_sha256, the signature and, for a re-check, supersedes).
_SAME_AS_BUNDLE = ("request_id", "type", "tier", "verdict", "fields", "reasons")


def verdict_problems(
    path: Path,
    trusted: TrustedKeys | None,
    *,
    manifest_sha256: str | None = None,
    bundle_verdict: dict[str, Any] | None = None,
) -> list[Problem]:
    """Why an outbox verdict file does not hold (empty when it does).

    Alone, its signature is checked (and its key against ``trusted``). Beside its bundle
    (``manifest_sha256`` of the manifest's bytes, the bundle's ``verdict.json``), it must
    also name that manifest and say what the bundle says; a reviewer's decision (with
    ``decided_by``) is a new verdict over the same evidence, checked by its signature.
    """
    name = Path(path).name
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(doc, dict):
            raise ValueError("not an object")
    except (OSError, ValueError):
        return [Problem("verdict", name, "not a readable verdict file")]
    problems = [
        Problem("untrusted" if "trusted" in why else "verdict", name, why)
        for why in document_problems(doc, trusted)
    ]
    if manifest_sha256 is not None and doc.get("manifest_sha256") != manifest_sha256:
        problems.append(
            Problem("verdict", name, "it names another manifest than this bundle's (swapped?)")
        )
    if bundle_verdict is not None and not doc.get("decided_by"):
        differ = [k for k in _SAME_AS_BUNDLE if doc.get(k) != bundle_verdict.get(k)]
        if differ:
            problems.append(
                Problem(
                    "verdict",
                    name,
                    f"it differs from the evidence's verdict.json in {', '.join(differ)} "
                    f"(outbox: {doc.get('verdict')}, evidence: {bundle_verdict.get('verdict')})",
                )
            )
    return problems


def _verify(src: _Source, report: VerifyReport, trusted_keys: TrustedKeys | None) -> None:
    names = src.names()
    if MANIFEST not in names:
        report.problems.append(Problem("missing", MANIFEST, "the bundle has no manifest"))
        return
    try:
        with src.open(MANIFEST) as f:
            manifest = json.loads(f.read())
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
            raise ValueError("not a manifest")
    except ValueError:
        report.problems.append(Problem("manifest", MANIFEST, "not a valid manifest (edited?)"))
        return
    report.manifest = manifest
    report.request_id = manifest.get("request_id")
    if manifest.get("format") != FORMAT:
        report.problems.append(
            Problem("manifest", MANIFEST, f"unknown format {manifest.get('format')!r}")
        )
    _check_signature(manifest, report, trusted_keys)
    listed: set[str] = set()
    for item in manifest["files"]:
        try:
            name = str(item["name"])
            check_name(name)
            want_hash, want_size = str(item["sha256"]), int(item["size"])
        except (KeyError, TypeError, ValueError, InputError):
            report.problems.append(Problem("manifest", MANIFEST, "a file entry is malformed"))
            continue
        listed.add(name)
        if name not in names:
            report.problems.append(Problem("missing", name, "listed in the manifest, not present"))
            continue
        try:
            digest, size = src.hash(name)
        except OSError:
            report.problems.append(Problem("missing", name, "cannot be read"))
            continue
        report.files_checked += 1
        if size != want_size:
            report.problems.append(
                Problem("changed", name, f"size {size} bytes, manifest says {want_size}")
            )
        elif digest != want_hash:
            report.problems.append(Problem("changed", name, "SHA-256 differs from the manifest"))
    for extra in sorted(names - listed - {MANIFEST}):
        report.problems.append(Problem("extra", extra, "present but not listed in the manifest"))


def _check_signature(
    manifest: dict[str, Any], report: VerifyReport, trusted_keys: TrustedKeys | None
) -> None:
    sig = manifest.get("signature")
    if not isinstance(sig, dict) or sig.get("alg") != ALG:
        report.problems.append(Problem("signature", MANIFEST, "no Ed25519 signature"))
        return
    public_key = str(sig.get("public_key", ""))
    try:
        raw = base64.b64decode(public_key, validate=True)
        load_public_key(public_key)
    except ValueError:
        report.problems.append(Problem("signature", MANIFEST, "the public key is malformed"))
        return
    report.key_id = key_id_of(raw)
    if sig.get("key_id") != report.key_id:
        report.problems.append(
            Problem("signature", MANIFEST, "key_id does not belong to the public key")
        )
    unsigned = {k: v for k, v in manifest.items() if k != "signature"}
    if not verify_signature(public_key, canonical_json(unsigned), str(sig.get("value", ""))):
        report.problems.append(
            Problem(
                "signature",
                MANIFEST,
                "the signature does not match: the manifest was edited after sealing",
            )
        )
    if trusted_keys is not None and not trusted_keys.trusts(public_key):
        report.problems.append(
            Problem(
                "untrusted",
                MANIFEST,
                f"signed by key {report.key_id}, which is not one of the trusted keys",
            )
        )


def export_bundle(path: Path, out_zip: Path) -> Path:
    """Zip a sealed bundle as ``<request_id>/...`` into ``out_zip`` (written atomically)."""
    path = Path(path)
    out_zip = Path(out_zip)
    if not (path / MANIFEST).is_file():
        raise InputError(f"{path} is not a sealed evidence bundle (no manifest.json).")
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_zip.with_name(f".{out_zip.name}.{os.getpid()}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames.sort()
                for fn in sorted(filenames):
                    file = Path(dirpath) / fn
                    rel = file.relative_to(path).as_posix()
                    zf.write(file, f"{path.name}/{rel}")
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        tmp.replace(out_zip)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InputError(f"Cannot write {out_zip} ({exc.strerror}); choose another place.") from exc
    return out_zip


# --------------------------------------------------------------------------- listing


@dataclass
class BundleSummary:
    """What ``evidence ls`` shows, read from verdict.json and the manifest (no hashing)."""

    request_id: str
    path: Path
    type: str | None
    verdict: str | None
    finished_at: datetime | None
    size: int


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def list_bundles(evidence_dir: Path) -> list[BundleSummary]:
    """Every sealed bundle, newest first. Reads two small JSON files per bundle."""
    out: list[BundleSummary] = []
    evidence_dir = Path(evidence_dir)
    if not evidence_dir.is_dir():
        return out
    for entry in os.scandir(evidence_dir):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        folder = Path(entry.path)
        manifest = _read_json(folder / MANIFEST)
        if not isinstance(manifest, dict):
            continue
        verdict = _read_json(folder / "verdict.json")
        verdict = verdict if isinstance(verdict, dict) else {}
        finished = verdict.get("finished_at") or manifest.get("finished_at")
        try:
            when = datetime.fromisoformat(finished) if finished else None
        except ValueError:
            when = None
        size = sum(int(f.get("size", 0)) for f in manifest.get("files", []) if isinstance(f, dict))
        out.append(
            BundleSummary(
                request_id=str(manifest.get("request_id", entry.name)),
                path=folder,
                type=verdict.get("type"),
                verdict=verdict.get("verdict"),
                finished_at=when,
                size=size,
            )
        )
    out.sort(key=lambda b: b.finished_at.timestamp() if b.finished_at else 0.0, reverse=True)
    return out
