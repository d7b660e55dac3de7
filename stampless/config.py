"""robot.toml, loaded into one validated configuration.

Precedence, lowest first: the defaults written here < robot.toml < environment
variables ``STAMPLESS__SECTION__KEY=value`` (the value parsed as a TOML value when it
parses, else taken as a string) < command-line options (applied by the CLI through
:meth:`Config.with_overrides`).

Relative paths in robot.toml are relative to the folder that holds robot.toml, so a
project works the same from any current directory. Secrets are never values here, only
references (``env:NAME``, ``file:PATH#NAME``, ``keyring:SERVICE/NAME``), resolved by
:mod:`stampless.vault` when they are used.
"""

from __future__ import annotations

import os
import re
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from stampless.errors import ConfigError
from stampless.models import Tier

SECRET_SCHEMES = ("env:", "file:", "keyring:")
_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta | None:
    """``30m``, ``2h``, ``90d``, ``12w`` as a timedelta; None when ``text`` is not one."""
    m = _DURATION.match(text.strip())
    return timedelta(**{_UNITS[m.group(2)]: int(m.group(1))}) if m else None


ENV_PREFIX = "STAMPLESS__"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _secret_ref(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if not value.startswith(SECRET_SCHEMES):
        # Never echo the value: it may be the secret itself.
        raise ValueError(
            "must be a reference to a secret (env:NAME, file:PATH#NAME or keyring:SERVICE/NAME), "
            "never the secret itself"
        )
    return value


class ProjectConfig(_Section):
    name: str = "stampless"
    var_dir: Path = Path("var")


class BrowserConfig(_Section):
    executable_path: str | None = None
    headless: bool = True
    args: list[str] = Field(
        default_factory=lambda: [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ]
    )
    timeout_ms: int = Field(default=15_000, ge=100)
    navigation_timeout_ms: int = Field(default=20_000, ge=100)
    download_timeout_ms: int = Field(default=30_000, ge=100)
    recycle_after: int = Field(default=200, ge=1)
    trace: Literal["off", "on_failure", "always"] = "on_failure"
    viewport_width: int = 1280
    viewport_height: int = 900


class AccountConfig(_Section):
    name: str
    username: str
    password: str
    totp: str | None = None

    _check_password = field_validator("password")(_secret_ref)
    _check_totp = field_validator("totp")(_secret_ref)


class ViewportConfig(_Section):
    width: int = Field(ge=100, le=10_000)
    height: int = Field(ge=100, le=10_000)


class HttpCredentialsConfig(_Section):
    """HTTP authentication (Basic/Digest/NTLM) the system's web server asks for."""

    username: str
    password: str

    _check_password = field_validator("password")(_secret_ref)


class ProxyConfig(_Section):
    """The proxy the system is reached through (``http://host:port``, ``socks5://…``)."""

    server: str
    bypass: str | None = None  # comma-separated hosts, e.g. ".internal, 10.0.0.1"
    username: str | None = None
    password: str | None = None

    _check_password = field_validator("password")(_secret_ref)


# A BCP 47 language tag as Chromium takes it: "zh-CN", "en-US", "en", "pt-BR", "sr-Latn-RS".
_LOCALE = re.compile(r"[a-z]{2,3}(-[A-Z][a-z]{3})?(-([A-Z]{2}|[0-9]{3}))?")


class SystemConfig(_Section):
    """One department system: where it is, which robot drives it, which accounts it has.

    The browser settings (``locale`` to ``ignore_https_errors``) shape the context each
    account's session runs in: a system serves the language of ``locale``
    (``Accept-Language`` and ``navigator.language``), shows dates in ``timezone``, and so
    on. The defaults are those of a Chinese department system.
    """

    url: str
    robot: Path
    selectors: Path
    accounts: list[AccountConfig] = Field(min_length=1)
    max_relogins: int = Field(default=3, ge=0, le=10)
    relogin_backoff_s: float = Field(default=1.0, ge=0)
    circuit_failures: int = Field(default=5, ge=1)
    circuit_reset_s: float = Field(default=30.0, gt=0)
    locale: str = "zh-CN"
    timezone: str = "Asia/Shanghai"
    user_agent: str | None = None  # None: Chromium's own
    viewport: ViewportConfig | None = None  # None: [browser] viewport_width × viewport_height
    # Sent with every request; a value may be a secret reference (an Authorization header).
    extra_http_headers: dict[str, str] = Field(default_factory=dict)
    http_credentials: HttpCredentialsConfig | None = None
    proxy: ProxyConfig | None = None
    ignore_https_errors: bool = False

    @field_validator("locale")
    @classmethod
    def _check_locale(cls, value: str) -> str:
        if not _LOCALE.fullmatch(value):
            raise ValueError(
                f'{value!r} is not a language tag; use one such as "zh-CN", "en-US" or "en"'
            )
        return value

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f'{value!r} is not an IANA time zone; use one such as "Asia/Shanghai", '
                '"Europe/Paris" or "UTC"'
            ) from None
        return value


class TypeConfig(_Section):
    """One document type: its task module, the system that holds its records, its tier."""

    task: Path
    system: str | None = None
    tier: Tier | None = None
    thresholds: dict[str, float] = Field(default_factory=dict)


class PreprocessConfig(_Section):
    orientation: bool = True
    deskew: bool = True
    perspective: bool = True
    rescale: bool = True
    illumination: bool = True
    remove_seal: bool = True
    denoise: bool = True
    # Off by default: Tesseract thresholds grey pages itself, and on generated scans
    # reading the grey image found 20% more labels than reading our Otsu output.
    binarize: bool = False
    save_steps: bool = True


class CalibrationConfig(_Section):
    """Every threshold and margin of reading a scan and verifying it against the record,
    in one place (``[ocr.calibration]``; docs/ocr.md says how they were calibrated).

    A field's confidence threshold is ``[types.T] thresholds.FIELD`` when robot.toml sets
    it, else the field's own threshold in its task module, else :attr:`min_confidence`.
    Margins are log-odds in nats (natural log of a probability ratio).
    """

    # A field read below its threshold is re-read by the second reader, and with no record
    # to verify it against, goes to a person.
    min_confidence: float = Field(default=0.80, ge=0, le=1)
    # The record's value must be this much likelier than any other string the image of
    # the field supports to call the field verified (e^3: 20 to 1). bench/RESULTS.md
    # has the margins of genuine and altered fields it was chosen from.
    verify_margin: float = Field(default=3.0, ge=0)
    # Another valid value must be this much likelier than the record's to call the field
    # a mismatch (e^8: about 3,000 to 1); in between, a person decides.
    contradict_margin: float = Field(default=8.0, ge=0)
    # The same for names and free text (kinds whose marks carry no meaning): with no check
    # character, a blurred genuine character can favour its look-alike by 8-14 nats, as
    # much as some altered ones; below this a person decides (e^16: about 9 million to 1).
    contradict_margin_text: float = Field(default=16.0, ge=0)
    # A field in doubt whose margin is above -view_floor is read twice more, cropped
    # apart from its line; it is verified when every reading is above -view_floor and the
    # three margins sum to verify_margin (on the tune split an altered field's lowest
    # reading sits at -14 nats and below, its next lowest at -9).
    view_floor: float = Field(default=3.0, ge=0)
    # Two readings that disagree keep this share of the lower confidence.
    disagreement_factor: float = Field(default=0.5, ge=0, le=1)
    # Highest confidence of a value repaired from another field (an ID from its printed
    # birth date): below every threshold, so a person confirms it.
    repair_confidence: float = Field(default=0.5, ge=0, le=1)

    def contradict(self, spec: Any) -> float:
        """The margin another value needs to make field ``spec`` (a FieldSpec) a mismatch."""
        return self.contradict_margin_text if spec.kind_def.loose_marks else self.contradict_margin

    def threshold(self, spec: Any, overrides: dict[str, float] | None = None) -> float:
        """The confidence threshold of field ``spec`` (a FieldSpec)."""
        if overrides and spec.name in overrides:
            return float(overrides[spec.name])
        return float(spec.threshold if spec.threshold is not None else self.min_confidence)


class OcrConfig(_Section):
    # "auto": PP-OCR when it is installed and its models load, else Tesseract alone.
    engine: Literal["auto", "ppocr", "tesseract"] = "auto"
    # The other engine as second reader: Tesseract re-reads digit and code fields PP-OCR
    # is unsure of; PP-OCR re-reads names for Tesseract. "none" asks no one.
    second_opinion: Literal["auto", "none", "ppocr", "tesseract"] = "auto"
    # PP-OCR's text detector: "int8", stampless's 8-bit form of RapidOCR's model (a third
    # of the CPU, the same lines: bench/quantize_detector.py), or "float", RapidOCR's own.
    detector: Literal["int8", "float"] = "int8"
    languages: str = "chi_sim+eng"
    tesseract_cmd: str | None = None
    # "auto": the system's libtesseract in-process when found (and tesseract_cmd unset);
    # "off": always the tesseract command; or the library file's path.
    tesseract_library: str = "auto"
    max_pixels: int = Field(default=60_000_000, ge=1_000_000)
    max_file_mb: float = Field(default=40.0, gt=0)
    timeout_s: float = Field(default=60.0, gt=0)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)

    @model_validator(mode="before")
    @classmethod
    def _older_keys(cls, data: Any) -> Any:
        # Earlier robot.toml files: engine "rapidocr" and a top-level min_confidence.
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key in ("engine", "second_opinion"):
            if data.get(key) == "rapidocr":
                data[key] = "ppocr"
        if "min_confidence" in data:
            calibration = dict(data.get("calibration") or {})
            calibration.setdefault("min_confidence", data.pop("min_confidence"))
            data["calibration"] = calibration
        return data

    @property
    def min_confidence(self) -> float:
        return self.calibration.min_confidence


class TiersConfig(_Section):
    """Promised times (SLA) per tier, in seconds from the moment a request is received."""

    instant: float = Field(default=10, gt=0)
    robot: float = Field(default=180, gt=0)
    manual: float = Field(default=600, gt=0)

    def sla_seconds(self, tier: Tier) -> float:
        return float(getattr(self, Tier(tier).value))


_MACHINE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,62}")


def machine_name(hostname: str) -> str:
    """A host name as a machine name (:data:`_MACHINE`): odd characters become '-'."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", hostname)[:63] or "machine"
    return name if name[0].isalpha() else f"m-{name}"[:63]


class StoreConfig(_Section):
    """Where the deployment's shared state lives (docs/store.md).

    ``sqlite`` (the default): files under var/, for one machine. ``postgres``: one
    PostgreSQL database that every machine of the deployment uses; ``url`` is a secret
    reference to its libpq URL (``env:STAMPLESS_DATABASE_URL``; a Unix socket is
    ``postgresql:///stampless?host=/run/postgresql``), since a URL may carry a password.
    ``shared_dir``: a folder every machine reaches (a shared mount), where ``evidence/``
    and ``outbox/`` go unless their own paths are set, and where each machine keeps its
    own audit chain (``audit/<machine>``); None: var/.
    """

    backend: Literal["sqlite", "postgres"] = "sqlite"
    url: str | None = None
    shared_dir: Path | None = None
    # This machine's name in shared_dir (its audit chain: shared_dir/audit/<machine>);
    # None: the host name. Two machines must never share one.
    machine: str | None = None

    _check_url = field_validator("url")(_secret_ref)

    @field_validator("machine")
    @classmethod
    def _check_machine(cls, value: str | None) -> str | None:
        if value is not None and not _MACHINE.fullmatch(value):
            raise ValueError(
                "must be a name of letters, digits, '.', '_' or '-', starting with a letter "
                "(at most 63 characters)"
            )
        return value

    @model_validator(mode="after")
    def _url_for_postgres(self) -> StoreConfig:
        if self.backend == "postgres" and self.url is None:
            raise ValueError(
                'backend "postgres" needs url, a reference to the database URL such as '
                '"env:STAMPLESS_DATABASE_URL"'
            )
        return self


class QueueConfig(_Section):
    backend: Literal["sqlite"] = "sqlite"
    path: Path | None = None  # default: <var_dir>/queue.db (backend sqlite only)
    # Short, and renewed by the worker's heartbeat every third of it: a killed worker's
    # item is back in the queue within seconds, not minutes.
    lease_s: float = Field(default=15, gt=0)
    max_attempts: int = Field(default=5, ge=1)
    backoff_base_s: float = Field(default=1.0, ge=0)
    backoff_max_s: float = Field(default=30.0, ge=0)


class WebhookConfig(_Section):
    url: str
    token: str | None = None
    timeout_s: float = Field(default=10, gt=0)
    max_attempts: int = Field(default=8, ge=1)

    _check_token = field_validator("token")(_secret_ref)


class OutboxConfig(_Section):
    path: Path | None = None  # default: <var_dir>/outbox
    webhook: WebhookConfig | None = None


class EvidenceConfig(_Section):
    path: Path | None = None  # default: <var_dir>/evidence
    signing_key: str | None = None
    keep_trace_on_success: bool = False
    # Every preprocessing step of the scan, in every bundle; by default only where the
    # machine doubted (a mismatch, a review): the image OCR read is always kept.
    keep_steps: bool = False
    # How long sealed bundles are kept ("90d", "12w", "2160h"); `stampless evidence prune`
    # removes older ones and leaves a signed tombstone. None: kept for ever.
    retention: str | None = None

    @field_validator("retention")
    @classmethod
    def _check_retention(cls, value: str | None) -> str | None:
        if value is not None and not parse_duration(value):
            raise ValueError("must be a duration such as 90d, 12w or 2160h")
        return value

    @property
    def retention_delta(self) -> timedelta | None:
        return parse_duration(self.retention) if self.retention else None

    # The public keys verifiers trust, as "sha256:<hex>" fingerprints (stampless keys
    # show), and/or a file of base64 public keys, one a line, outside var/.
    trusted_keys: list[str] = Field(default_factory=list)
    keyring: Path | None = None

    _check_key = field_validator("signing_key")(_secret_ref)


class AuditConfig(_Section):
    path: Path | None = None  # default: <var_dir>/audit
    rotate_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)


class InboxConfig(_Section):
    path: Path | None = None  # default: <var_dir>/inbox


class DeliveryConfig(_Section):
    """Delivery targets beside the webhook.

    ``push``: a system whose robot takes final verdicts back (the service hall's approval
    system): its ``operation`` runs for each final verdict of a request a job of that
    system took in, every ``push_every_s`` seconds (the ``push_outbox`` job).
    """

    push: str | None = None
    operation: str = "push"
    push_every_s: float = Field(default=10, gt=0)
    max_attempts: int = Field(default=8, ge=1)


class JobConfig(_Section):
    """A scheduled job: ``kind`` names what it does, ``every_s`` or ``cron`` when.

    ``kind = "robot"`` runs the deployment's own robot operation ``operation`` of
    ``system`` (a method the robot marks with ``@operation``), on a logged-in page of
    ``account`` (None: the first usable one), for at most ``timeout_s`` seconds.
    """

    kind: Literal[
        "poll_inbox",
        "recheck",
        "sweep_leases",
        "sweep_deadlines",
        "deliver_outbox",
        "audit_checkpoint",
        "prune_evidence",
        "robot",
        "push_outbox",
    ]
    every_s: float | None = Field(default=None, gt=0)
    cron: str | None = None
    type: str | None = None
    older_than_days: float | None = None
    system: str | None = None
    operation: str | None = None
    account: str | None = None
    timeout_s: float = Field(default=600, gt=0)


class IntakeConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    token: str | None = None
    # Folders besides a request's own that its scan may be in (symlinks resolved).
    scan_roots: list[Path] = Field(default_factory=list)
    # Seconds the HTTP intake waits for the rest of a request before answering 408.
    read_timeout_s: float = Field(default=10.0, gt=0, le=300)

    _check_token = field_validator("token")(_secret_ref)


class ReviewConfig(_Section):
    users_path: Path | None = None  # default: <var_dir>/review/users.json
    claim_minutes: float = Field(default=5, gt=0)
    max_failed_logins: int = Field(default=5, ge=1)
    lockout_minutes: float = Field(default=15, gt=0)
    # Per client address: failures before each attempt waits twice as long as the last
    # (up to client_backoff_max_s), and how many different names failing from one
    # address block it for lockout_minutes.
    client_free_failures: int = Field(default=5, ge=1)
    client_max_usernames: int = Field(default=5, ge=2)
    client_backoff_max_s: float = Field(default=300, gt=0)
    # Reverse proxies in front of the console whose X-Forwarded-For is believed for the
    # client address (0: the connection's address; a client can forge the header).
    trusted_proxies: int = Field(default=0, ge=0, le=5)
    secret_key: str | None = None
    # None: Secure cookies unless the console listens on loopback (plain HTTP in tests).
    secure_cookies: bool | None = None
    session_hours: float = Field(default=8, gt=0)
    # The console's language (a reviewer may switch) and the zone its times are shown in
    # (an IANA name such as "Asia/Shanghai"; None: the machine's).
    language: Literal["zh-CN", "en"] = "zh-CN"
    timezone: str | None = None

    _check_key = field_validator("secret_key")(_secret_ref)

    @field_validator("timezone")
    @classmethod
    def _check_zone(cls, value: str | None) -> str | None:
        if value is not None:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(
                    "must be a time zone name such as Asia/Shanghai (IANA tz database)"
                ) from None
        return value


class IssuerConfig(_Section):
    """A department that signs electronic certificates."""

    public_key: str  # base64 of the raw Ed25519 public key, or a path to a PEM file
    revocation_list: Path | None = None
    types: list[str] = Field(default_factory=list)  # document types it may sign; empty: any


class LoggingConfig(_Section):
    path: Path | None = None  # default: <var_dir>/log
    level: str = "INFO"


class Config(_Section):
    """The whole deployment. Build it with :func:`load_config`."""

    project: ProjectConfig = Field(default_factory=ProjectConfig)
    browser: BrowserConfig = Field(default_factory=BrowserConfig)
    systems: dict[str, SystemConfig] = Field(default_factory=dict)
    types: dict[str, TypeConfig] = Field(default_factory=dict)
    ocr: OcrConfig = Field(default_factory=OcrConfig)
    tiers: TiersConfig = Field(default_factory=TiersConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    queue: QueueConfig = Field(default_factory=QueueConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)
    evidence: EvidenceConfig = Field(default_factory=EvidenceConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    inbox: InboxConfig = Field(default_factory=InboxConfig)
    intake: IntakeConfig = Field(default_factory=IntakeConfig)
    jobs: dict[str, JobConfig] = Field(default_factory=dict)
    review: ReviewConfig = Field(default_factory=ReviewConfig)
    issuers: dict[str, IssuerConfig] = Field(default_factory=dict)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    # Where robot.toml lives; relative paths resolve against it. Not a TOML key.
    root: Path = Field(default_factory=Path.cwd, exclude=True)

    def resolve(self, value: Path | str) -> Path:
        """A path from robot.toml, relative to the folder that holds robot.toml."""
        p = Path(value)
        return p if p.is_absolute() else self.root / p

    def path(self, value: Path | str | None, default: str) -> Path:
        """Resolve a configured path against the project root, or ``var_dir/default``."""
        return self.var_dir / default if value is None else self.resolve(value)

    def shared_path(self, value: Path | str | None, default: str) -> Path:
        """Like :meth:`path`, but under ``[store] shared_dir`` (the folder every machine
        of the deployment reaches) when it is set: for what all machines must see."""
        shared = self.store.shared_dir
        if value is None and shared is not None:
            return self.resolve(shared) / default
        return self.path(value, default)

    @property
    def var_dir(self) -> Path:
        v = self.project.var_dir
        return v if v.is_absolute() else self.root / v

    @property
    def queue_path(self) -> Path:
        return self.path(self.queue.path, "queue.db")

    @property
    def outbox_dir(self) -> Path:
        return self.shared_path(self.outbox.path, "outbox")

    @property
    def evidence_dir(self) -> Path:
        return self.shared_path(self.evidence.path, "evidence")

    @property
    def audit_writer(self) -> str | None:
        """This machine's name among the deployment's audit chains; None when the chain
        is not in ``[store] shared_dir`` (one machine, or ``[audit] path`` set)."""
        if self.audit.path is not None or self.store.shared_dir is None:
            return None
        import socket

        return self.store.machine or machine_name(socket.gethostname())

    @property
    def audit_dir(self) -> Path:
        writer = self.audit_writer
        if writer is None:
            return self.path(self.audit.path, "audit")
        return self.shared_path(None, "audit") / writer

    def audit_chains(self) -> dict[str | None, Path]:
        """Every audit chain of the deployment by writer: each machine's under ``[store]
        shared_dir``, else this machine's alone (writer None)."""
        if self.audit_writer is None:
            return {None: self.audit_dir}
        root = self.shared_path(None, "audit")
        chains: dict[str | None, Path] = {self.audit_writer: self.audit_dir}
        if root.is_dir():
            chains.update({p.name: p for p in root.iterdir() if p.is_dir()})
        return dict(sorted(chains.items(), key=lambda kv: kv[0] or ""))

    @property
    def log_dir(self) -> Path:
        return self.path(self.logging.path, "log")

    @property
    def inbox_dir(self) -> Path:
        return self.path(self.inbox.path, "inbox")

    def type_config(self, type_name: str) -> TypeConfig:
        """The configuration of a document type, or an InputError naming the known ones."""
        try:
            return self.types[type_name]
        except KeyError:
            known = ", ".join(sorted(self.types)) or "none"
            raise ConfigError(
                f"Unknown document type {type_name!r}; robot.toml defines: {known}."
            ) from None

    def system_config(self, system: str) -> SystemConfig:
        try:
            return self.systems[system]
        except KeyError:
            known = ", ".join(sorted(self.systems)) or "none"
            raise ConfigError(
                f"Unknown department system {system!r}; robot.toml defines: {known}."
            ) from None

    def with_overrides(self, overrides: dict[str, Any]) -> Config:
        """A copy with dotted-key overrides applied (``{"browser.headless": False}``)."""
        data = self.model_dump(mode="python")
        for dotted, value in overrides.items():
            _set_dotted(data, dotted, value)
        return _validate(data, self.root, "command line")


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def _env_overrides(environ: dict[str, str] | os._Environ[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        dotted = name[len(ENV_PREFIX) :].lower().replace("__", ".")
        try:
            value: Any = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        out[dotted] = value
    return out


def _describe(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    kind = first["type"]
    if kind == "extra_forbidden":
        return f"{source}: unknown key '{key}'; remove it or check its spelling."
    if kind == "missing":
        return f"{source}: key '{key}' is required but missing."
    msg = first["msg"]
    more = f" (and {len(error.errors()) - 1} more problem(s))" if len(error.errors()) > 1 else ""
    return f"{source}: key '{key}': {msg}.{more}"


def _validate(data: dict[str, Any], root: Path, source: str) -> Config:
    data = dict(data)
    data.pop("root", None)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None
    cfg.root = root
    # Code and selector maps are found by path relative to robot.toml; make them absolute
    # once here so every consumer gets the same file whatever the current folder is.
    for system in cfg.systems.values():
        system.robot = cfg.resolve(system.robot)
        system.selectors = cfg.resolve(system.selectors)
    for doc_type in cfg.types.values():
        doc_type.task = cfg.resolve(doc_type.task)
    return cfg


def load_config(
    path: Path | str | None = None,
    *,
    environ: dict[str, str] | None = None,
    required: bool = True,
) -> Config:
    """Load robot.toml (default ``./robot.toml``), apply environment overrides, validate.

    With ``required=False`` a missing file gives the defaults rooted at the current folder.
    Raises :class:`ConfigError` with the file, the key and what was expected.
    """
    file = Path(path) if path is not None else Path("robot.toml")
    data: dict[str, Any] = {}
    if file.is_file():
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML ({exc}).") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{file}: cannot be read ({exc.__class__.__name__}).") from None
        root = file.resolve().parent
    elif required:
        raise ConfigError(
            f"{file}: no such file; run from a project folder, pass --config PATH, "
            "or create a project with 'stampless init DIR'."
        )
    else:
        root = Path.cwd()
    for dotted, value in _env_overrides(environ if environ is not None else os.environ).items():
        _set_dotted(data, dotted, value)
    return _validate(data, root, str(file))
