"""The reviewer console: a small Flask app rendered on the server, assets served locally.

Pages: login, the queue (overdue first, live SLA countdown), an item (scan with
toggleable OCR boxes, the gathered record, the field table, screenshots, and the
decision form), and an admin page (SLA charts, department circuit states, selector
drift). Nothing but the login page and static assets is visible without a session.

Security: argon2 password hashes with lockout (:mod:`.users`); the session cookie is
HttpOnly, SameSite=Strict and Secure unless the console listens on loopback over plain
HTTP; every form carries the session's CSRF token; a strict Content-Security-Policy
allows only this origin's scripts and styles.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import math
import os
import secrets
from datetime import UTC, datetime, timedelta
from functools import cache, partial, wraps
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from flask import (
    Flask,
    Response,
    abort,
    flash,
    g,
    redirect,
    render_template,
    request,
    send_file,
    session,
    url_for,
)
from loguru import logger
from markupsafe import Markup
from PIL import Image

from stampless.audit import AuditLog
from stampless.errors import InputError, StamplessError
from stampless.evidence import OCR_INPUT_STEM
from stampless.metrics import HEALTH_PATHS, answer
from stampless.models import Tier, VerdictKind, utcnow
from stampless.review.charts import format_seconds, read_verdicts, sla_chart_svg, sla_figures
from stampless.review.i18n import (
    LANG_COOKIE,
    LANGUAGES,
    field_label,
    localtime,
    translations,
    type_label,
    word,
    zone_of,
)
from stampless.review.store import ReviewConflict, ReviewItem, ReviewStore
from stampless.review.users import LoginFailed, LoginLimiter, Role, UserStore
from stampless.signing import Signer, production_signer

if TYPE_CHECKING:
    from collections.abc import Callable

    from stampless.config import Config

PACKAGE_DIR = Path(__file__).resolve().parent
TEMPLATES = PACKAGE_DIR.parent / "templates"
STATIC = PACKAGE_DIR / "static"
SESSION_KEY_FILE = "session.key"
DECISIONS = {
    "verified": VerdictKind.verified,
    "mismatch": VerdictKind.mismatch,
    "not_found": VerdictKind.not_found,
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif"}

_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost, where plain HTTP never leaves the machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_secret_key(config: Config) -> bytes:
    """The key that signs session cookies: from the vault if configured, else a local file.

    The file ``<var_dir>/review/session.key`` is created once with mode 0600, so sessions
    survive a restart; deleting it logs everyone out.
    """
    ref = config.review.secret_key
    if ref:
        from stampless.vault import resolve_secret

        return resolve_secret(ref, config=config).reveal().encode("utf-8")
    path = config.var_dir / "review" / SESSION_KEY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_bytes()
        if len(key) >= 32:
            return key
        raise InputError(
            f"{path} is too short to be a session key; delete it and restart the console."
        ) from None
    key = secrets.token_hex(32).encode("ascii")
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    return key


def _files_of(bundle: Path) -> list[dict[str, Any]]:
    """The files a bundle's manifest lists, as dicts with at least ``name`` and ``kind``."""
    try:
        manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    files = manifest.get("files", []) if isinstance(manifest, dict) else []
    if isinstance(files, dict):
        files = [{"name": k, **(v if isinstance(v, dict) else {})} for k, v in files.items()]
    out = []
    for f in files:
        if isinstance(f, dict):
            name = f.get("name") or f.get("path")
            if isinstance(name, str):
                out.append({**f, "name": name, "kind": f.get("kind") or ""})
    return out


def _inside(base: Path, name: str) -> Path | None:
    """``base/name`` if it stays inside ``base`` (no ``..`` or absolute tricks)."""
    try:
        path = (base / name).resolve()
        path.relative_to(base.resolve())
    except (ValueError, OSError):
        return None
    return path


def _read_json(path: Path | None) -> Any:
    if path is None:
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class ItemView:
    """What the item page shows, gathered from the item and its evidence bundle."""

    def __init__(self, item: ReviewItem) -> None:
        self.item = item
        self.bundle = Path(item.evidence) if item.evidence else None
        self.files = _files_of(self.bundle) if self.bundle else []

    def _by_kind(self, *kinds: str) -> list[dict[str, Any]]:
        return [f for f in self.files if f["kind"] in kinds]

    def _json_of(self, *kinds: str) -> Any:
        for f in self._by_kind(*kinds):
            if self.bundle is not None and str(f["name"]).endswith(".json"):
                data = _read_json(_inside(self.bundle, f["name"]))
                if data is not None:
                    return data
        return None

    @property
    def screenshots(self) -> list[dict[str, Any]]:
        return [
            f
            for f in self.files
            if Path(f["name"]).suffix.lower() in IMAGE_SUFFIXES
            and f["kind"] not in ("scan", "preprocessed", "ocr_step")
        ]

    @property
    def record(self) -> dict[str, Any] | None:
        data = self._json_of("record")
        if isinstance(data, dict) and isinstance(data.get("fields"), dict):
            return dict(data["fields"])
        return None

    @property
    def record_meta(self) -> dict[str, Any]:
        data = self._json_of("record")
        if isinstance(data, dict):
            return {
                k: v
                for k, v in data.items()
                if k not in ("fields", "status") and v is not None and not isinstance(v, dict)
            }
        return {}

    @property
    def scan_name(self) -> str | None:
        """The scan's name inside the bundle, if the bundle holds it."""
        names = [f["name"] for f in self._by_kind("scan")]
        return names[0] if names else None

    def scan_path(self) -> Path | None:
        for f in self._by_kind("scan"):
            if self.bundle is not None:
                path = _inside(self.bundle, f["name"])
                if path and path.is_file():
                    return path
        base = self.item.base_dir or Path.cwd()
        path = self.item.request.scan_path(base)
        return path if path is not None and path.is_file() else None

    @property
    def ocr_boxes(self) -> dict[str, Any] | None:
        """Field boxes from the OCR output, with the image they are drawn on.

        The boxes are in the coordinates of the image OCR read: the scan itself, or its
        preprocessed copy (deskewed, flattened) when preprocessing changed its size. The
        image shown under the boxes is the first of those whose size matches.
        """
        data = self._json_of("ocr")
        if not isinstance(data, dict) or not self.bundle:
            return None
        size = data.get("image_size")
        boxes = [
            {"name": name, "box": f["box"], "value": f.get("value")}
            for name, f in (data.get("fields") or {}).items()
            if isinstance(f, dict) and f.get("box")
        ]
        if not size or not boxes:
            return None
        preprocessed = sorted(
            (f["name"] for f in self._by_kind("preprocessed")),
            key=lambda n: (PurePosixPath(n).stem != OCR_INPUT_STEM, n),
        )
        for name in [f["name"] for f in self._by_kind("scan")] + preprocessed:
            path = _inside(self.bundle, name)
            if path is None or not path.is_file():
                continue
            try:
                with Image.open(path) as im:
                    matches = list(im.size) == list(size)
            except OSError:
                continue
            if matches:
                return {"size": size, "boxes": boxes, "image": name}
        return None

    def file_path(self, name: str) -> Path | None:
        if self.bundle is None or name not in {f["name"] for f in self.files}:
            return None
        return _inside(self.bundle, name)


def create_app(config: Config, *, host: str = "127.0.0.1", signer: Signer | None = None) -> Flask:
    """The console for one deployment; ``host`` is where it listens (decides Secure cookies).

    ``signer`` signs decisions (default: the deployment's configured key).
    """
    app = Flask(
        __name__,
        template_folder=str(TEMPLATES),
        static_folder=str(STATIC),
        static_url_path="/static",
    )
    secure = config.review.secure_cookies
    if secure is None:
        secure = not is_loopback(host)
    app.config.update(
        SECRET_KEY=load_secret_key(config),
        SESSION_COOKIE_NAME="stampless_review",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=secure,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=config.review.session_hours),
        MAX_CONTENT_LENGTH=64 * 1024,
        TEMPLATES_AUTO_RELOAD=False,
    )
    if config.review.trusted_proxies:
        # Behind the hall's proxy every connection comes from the proxy: the limit per
        # client address needs the address the proxy saw, the last N X-Forwarded-For
        # entries (what a client writes into the header itself comes before them).
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=config.review.trusted_proxies)  # type: ignore[method-assign]
    store = ReviewStore.from_config(config)
    users = UserStore.from_config(config)
    limiter = LoginLimiter.from_config(config)
    claim_minutes = config.review.claim_minutes

    audit_log = AuditLog(config.audit_dir, rotate_bytes=config.audit.rotate_bytes)

    def audit() -> AuditLog:
        return audit_log

    @cache
    def decision_signer() -> Signer:
        # `review serve` resolves it before starting; an app built without one loads the
        # deployment's on the first decision (and refuses to decide without a key).
        return signer or production_signer(config)

    # -- session, CSRF and headers ------------------------------------------------------

    def csrf_token() -> str:
        token = session.get("csrf")
        if not token:
            token = secrets.token_urlsafe(32)
            session["csrf"] = token
        return str(token)

    app.jinja_env.globals["csrf_token"] = csrf_token

    # -- languages, times and labels (stampless.review.i18n) ------------------------------

    zone = zone_of(config)

    def _word(kind: str, value: str) -> str:
        return word(g.lang, kind, value)

    def _(message: str, **values: Any) -> str:
        """``message`` in the request's language, ``%(name)s`` filled from ``values``."""
        text = translations(g.lang).gettext(message)
        return text % values if values else text

    app.jinja_env.add_extension("jinja2.ext.i18n")
    app.jinja_env.install_gettext_callables(  # type: ignore[attr-defined]
        lambda message: translations(g.lang).gettext(message),
        lambda singular, plural, n: translations(g.lang).ngettext(singular, plural, n),
        newstyle=True,
    )
    app.jinja_env.globals.update(
        languages=list(LANGUAGES.items()),
        localtime=lambda value, fmt="%Y-%m-%d %H:%M:%S": localtime(value, zone, fmt),
        field_label=lambda type_name, name: field_label(config, type_name, name),
        type_label=lambda type_name: type_label(config, type_name),
        format_seconds=lambda value: format_seconds(value, (_("s"), _("min"), _("h"))),
        **{
            f"{kind}_label": partial(_word, kind)
            for kind in ("verdict", "status", "tier", "role", "circuit")
        },
    )

    @app.context_processor
    def _language() -> dict[str, Any]:
        return {"lang": g.lang}

    @app.before_request
    def _check() -> Any:
        chosen = request.args.get("lang")
        g.lang_chosen = chosen if chosen in LANGUAGES else None
        remembered = request.cookies.get(LANG_COOKIE)
        g.lang = g.lang_chosen or (
            remembered if remembered in LANGUAGES else config.review.language
        )
        g.user = None
        name = session.get("user")
        if name:
            user = users.get(name)
            if user is None or user.locked() or session.get("epoch") != user.session_epoch:
                session.clear()
            else:
                g.user = user
        if request.method == "POST":
            sent = request.form.get("csrf_token", "")
            expected = session.get("csrf", "")
            if not sent or not expected or not hmac.compare_digest(str(sent), str(expected)):
                logger.warning("review: POST {} refused: CSRF token missing or wrong", request.path)
                return render_template(
                    "review/error.html",
                    title=_("Form expired"),
                    message=_(
                        "The form was missing its security token or it expired; "
                        "reload the page and submit again."
                    ),
                ), 400
        return None

    @app.after_request
    def _headers(response: Response) -> Response:
        logger.debug("review: {} {} -> {}", request.method, request.path, response.status_code)
        response.headers["Content-Security-Policy"] = _CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        if not request.path.startswith("/static/"):
            response.headers["Cache-Control"] = "no-store"
        if getattr(g, "lang_chosen", None):
            response.set_cookie(
                LANG_COOKIE, g.lang_chosen, max_age=365 * 24 * 3600, samesite="Strict",
                httponly=True, secure=bool(app.config["SESSION_COOKIE_SECURE"]),
            )  # fmt: skip
        return response

    def login_required(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if g.user is None:
                return redirect(url_for("login", next=request.path))
            return view(*args, **kwargs)

        return wrapper

    def admin_required(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        @login_required
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if g.user.role is not Role.admin:
                abort(403)
            return view(*args, **kwargs)

        return wrapper

    @app.errorhandler(403)
    def _forbidden(error: Exception) -> Any:
        return render_template(
            "review/error.html",
            title=_("Not allowed"),
            message=_("This page is for administrators."),
        ), 403

    @app.errorhandler(404)
    def _not_found(error: Exception) -> Any:
        return render_template(
            "review/error.html",
            title=_("Not found"),
            message=_("No such page or item; go back to the queue."),
        ), 404

    # -- operations: health, readiness, metrics (no login: no personal data) -------------

    ready_checks = {
        "the review store": lambda: store.pending() is not None,
        "a reviewer account": lambda: bool(users.all()),
    }

    def operations() -> Response:
        status, content_type, body = answer(request.path, config, ready_checks)
        return Response(body, status=status, content_type=content_type)

    for path in HEALTH_PATHS:
        app.add_url_rule(path, path.strip("/"), operations)

    # -- login ----------------------------------------------------------------------------

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        error = None
        status = 200
        if request.method == "POST":
            name = request.form.get("name", "").strip()
            password = request.form.get("password", "")
            client = request.remote_addr or "unknown"
            wait = math.ceil(limiter.admit(client))
            if wait > 0:
                # Refused before the password is looked at: the wait is what slows a
                # guesser down, and a blocked address learns nothing more.
                page = render_template(
                    "review/login.html",
                    error=_(
                        "Too many failed logins from this address; try again in %(wait)s s.",
                        wait=wait,
                    ),
                )
                return page, 429, {"Retry-After": str(wait)}
            try:
                user = users.authenticate(name, password)
            except LoginFailed as exc:
                error, status = _(str(exc)), 401  # one message for every refusal
                limiter.failed(client, name)
                logger.info("review: failed login for {!r} from {}", name[:64], client)
            else:
                limiter.succeeded(client, name)
                # A fresh session on login: no fixation, a new CSRF token.
                session.clear()
                session.permanent = True
                session["user"] = user.name
                session["epoch"] = user.session_epoch
                csrf_token()
                logger.info("review: {} logged in", user.name)
                audit().append("logged_in", actor=user.name, console="review")
                target = request.args.get("next", "")
                # Only paths on this site: "//host" and "/\\host" would leave it.
                if not target.startswith("/") or target[1:2] in ("/", "\\"):
                    target = url_for("queue")
                return redirect(target)
        return render_template("review/login.html", error=error), status

    @app.post("/logout")
    def logout() -> Any:
        if g.user is not None:
            users.end_sessions(g.user.name)
        session.clear()
        return redirect(url_for("login"))

    # -- queue and items ----------------------------------------------------------------

    @app.get("/")
    @login_required
    def queue() -> Any:
        now = utcnow()
        items = store.pending(now)
        return render_template("review/queue.html", items=items, now=now)

    @app.get("/item/<request_id>")
    @login_required
    def item(request_id: str) -> Any:
        found = store.get(request_id)
        if found is None:
            abort(404)
        if found.status != "pending":
            return render_template("review/decided.html", item=found)
        if not store.take(request_id, g.user.name, claim_minutes):
            current = store.get(request_id)
            holder = current.held_by() if current else None
            return render_template(
                "review/error.html",
                title=_("Taken"),
                message=_(
                    "%(holder)s is reviewing this item; pick another one from the queue.",
                    holder=holder or _("Another reviewer"),
                ),
            ), 409
        taken = store.get(request_id)
        assert taken is not None
        return render_template("review/item.html", view=ItemView(taken), item=taken, now=utcnow())

    @app.get("/item/<request_id>/scan")
    @login_required
    def scan(request_id: str) -> Any:
        found = store.get(request_id)
        path = ItemView(found).scan_path() if found else None
        if path is None:
            abort(404)
        return send_file(path, max_age=0)

    @app.get("/item/<request_id>/file/<path:name>")
    @login_required
    def evidence_file(request_id: str, name: str) -> Any:
        found = store.get(request_id)
        path = ItemView(found).file_path(name) if found else None
        if path is None or not path.is_file():
            abort(404)
        return send_file(path, max_age=0)

    @app.post("/item/<request_id>/decide")
    @login_required
    def decide(request_id: str) -> Any:
        action = request.form.get("action", "")
        reason = request.form.get("reason", "").strip()
        if not reason:
            flash(_("Write a reason before deciding."), "error")
            return redirect(url_for("item", request_id=request_id))
        try:
            if action == "more":
                store.ask_more(request_id, g.user.name, reason)
                audit().append(
                    "reviewed",
                    request_id=request_id,
                    actor=g.user.name,
                    decision="more_info",
                    reason=reason,
                )
                flash(
                    _(
                        "%(id)s: more information requested; the item stays queued.",
                        id=request_id,
                    ),
                    "ok",
                )
            elif action in DECISIONS:
                final = store.decide(
                    request_id,
                    g.user.name,
                    DECISIONS[action],
                    reason,
                    outbox_dir=config.outbox_dir,
                    audit=audit(),
                    evidence_dir=config.evidence_dir,
                    signer=decision_signer(),
                )
                verdict = word(g.lang, "verdict", final.verdict.value)
                flash(_("%(id)s: decided %(verdict)s.", id=request_id, verdict=verdict), "ok")
            else:
                flash(_("Choose verify, reject, not found or ask for more."), "error")
                return redirect(url_for("item", request_id=request_id))
        except ReviewConflict as exc:
            flash(str(exc), "error")
        except InputError as exc:
            flash(str(exc), "error")
            return redirect(url_for("item", request_id=request_id))
        except StamplessError as exc:
            # An outbox conflict, or the audit/evidence write after a recorded decision:
            # say so plainly rather than showing a server error.
            logger.error("review: deciding {} failed: {}", request_id, exc)
            flash(f"{request_id}: {exc}", "error")
        return redirect(url_for("queue"))

    @app.post("/item/<request_id>/release")
    @login_required
    def release(request_id: str) -> Any:
        store.release(request_id, g.user.name)
        return redirect(url_for("queue"))

    # -- admin ---------------------------------------------------------------------------

    @app.get("/admin")
    @admin_required
    def admin() -> Any:
        now = utcnow()
        days = 14
        verdicts = read_verdicts(config.outbox_dir, since=now - timedelta(days=days))
        figures = sla_figures(verdicts, days=days, today=now.date())
        charts = {t: Markup(sla_chart_svg(figures, t)) for t in Tier}  # noqa: S704 - our own SVG, labels escaped
        totals = {t: figures.total(t) for t in Tier}
        return render_template(
            "review/admin.html",
            charts=charts,
            totals=totals,
            figures=figures,
            tiers=list(Tier),
            circuits=_circuits(config),
            drift=_drift(config),
            pending=len(store.pending(now)),
            users=users.all(),
        )

    return app


def _circuits(config: Config) -> list[dict[str, Any]]:
    """Circuit-breaker states of the department systems, as the workers persisted them.

    A configured system with no recorded state has had no failure yet: closed.
    """
    from stampless.circuit import read_circuits

    saved = read_circuits(config)
    rows = []
    for name in sorted(set(config.systems) | set(saved)):
        state = dict(saved.get(name) or {"state": "closed", "failures": 0})
        opened = state.get("opened_at")
        if isinstance(opened, int | float):
            state["opened_at"] = datetime.fromtimestamp(opened, UTC).strftime("%Y-%m-%d %H:%M:%S")
        rows.append({"system": name, **state})
    return rows


def _drift(config: Config) -> list[Any]:
    try:
        from stampless.robot._selectors import drift_summary
    except ImportError:
        return []
    return list(drift_summary(config.var_dir))[:50]
