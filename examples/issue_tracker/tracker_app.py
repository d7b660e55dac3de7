"""A small issue tracker: the web application the second worked example's robot drives.

It stands in for a system stampless has never seen, written by someone else: an
English interface (Chinese when the browser asks for it), a login form, a search box, a
result table with an "Open" link per hit, a detail page whose "Opened" time the browser
renders in its own time zone, and a scanned service report served *inline* (no
download). Run it with ``python tracker_app.py --port 8800`` (``--port 0``: a free
port); it prints ``tracker=http://127.0.0.1:PORT`` and then ``ready``.

Accounts: ``agent`` / ``tracker-pass`` (or ``--password``). ``--variant changed`` renames
the search form's ids and names, as a redesign would; ``--basic-auth USER:PASS`` puts
the whole site behind HTTP Basic authentication.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hmac
import html
import io
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask, Response, redirect, request
from werkzeug.serving import make_server

# ticket, title, reporter, opened (UTC, ISO 8601), status
TICKETS = [
    (
        "TRK-1001",
        "Printer on floor 3 jams on duplex",
        "Alice Martin",
        "2024-03-05T09:30:00Z",
        "open",
    ),
    (
        "TRK-1002",
        "VPN drops every twenty minutes",
        "Bruno Keller",
        "2024-04-11T14:05:00Z",
        "closed",
    ),
    ("TRK-1003", "Badge reader rejects new cards", "Chloe Dubois", "2024-05-20T23:40:00Z", "open"),
    ("TRK-1004", "Duplicate of TRK-1001", "Dario Rossi", "2024-06-02T08:15:00Z", "withdrawn"),
    ("TRK-1005", "Projector in room B has no signal", "Emma Novak", "2024-07-16T11:50:00Z", "open"),
]

# Each text of the interface: (key, English, Chinese).
_STRINGS: list[tuple[str, Any, Any]] = [
    ("title", "Helpdesk Tracker", "服务台工单系统"),
    ("username", "Username", "用户名"),
    ("password", "Password", "密码"),
    ("sign_in", "Sign in", "登录"),
    ("bad_login", "Invalid username or password.", "用户名或密码错误。"),
    ("search", "Search", "搜索"),
    ("ticket", "Ticket", "工单号"),
    ("no_match", "No issues match your search.", "没有匹配的工单。"),
    ("open", "Open", "打开"),
    (
        "columns",
        ("Ticket", "Title", "Reporter", "Status", ""),
        ("工单号", "标题", "报告人", "状态", ""),
    ),
    (
        "labels",
        ("Ticket", "Title", "Reporter", "Opened", "Status"),
        ("工单号", "标题", "报告人", "创建时间", "状态"),
    ),
    ("attachment", "Service report (scan)", "服务报告（扫描件）"),
    ("sign_out", "Sign out", "退出"),
]
TEXT: dict[str, dict[str, Any]] = {
    "en": {key: en for key, en, _zh in _STRINGS},
    "zh": {key: zh for key, _en, zh in _STRINGS},
}


@dataclass
class Settings:
    password: str = "tracker-pass"  # noqa: S105 - the demo account of a test application
    variant: str = "normal"
    basic_auth: str | None = None


def language() -> str:
    """Chinese for a browser whose first language is Chinese, else English."""
    first = request.headers.get("Accept-Language", "en").split(",")[0].strip().lower()
    return "zh" if first.startswith("zh") else "en"


def page(title: str, body: str) -> Response:
    lang = language()
    markup = f"""<!doctype html>
<html lang="{lang}"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px}} dt{{font-weight:bold;margin-top:.5em}}</style>
</head><body><header><b>{TEXT[lang]["title"]}</b></header><main>{body}</main></body></html>"""
    return Response(markup, content_type="text/html; charset=utf-8")


def render_report(ticket: tuple[str, str, str, str, str]) -> bytes:
    """The scanned service report of a ticket: a PNG with its printed fields."""
    from PIL import Image, ImageDraw, ImageFont

    number, title, reporter, opened, _status = ticket
    image = Image.new("L", (1400, 760), 255)
    draw = ImageDraw.Draw(image)
    candidates = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    ]
    path = next((p for p in candidates if Path(p).is_file()), None)
    big = ImageFont.truetype(path, 48) if path else ImageFont.load_default()
    small = ImageFont.truetype(path, 36) if path else ImageFont.load_default()
    draw.text((80, 60), "SERVICE REPORT", font=big, fill=0)
    rows = [
        ("Ticket No.", number),
        ("Reporter", reporter),
        ("Opened on", opened[:10]),
        ("Subject", title),
    ]
    for i, (label, value) in enumerate(rows):
        draw.text((80, 200 + i * 110), f"{label}:", font=small, fill=0)
        draw.text((400, 200 + i * 110), value, font=small, fill=0)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def create_app(settings: Settings) -> Flask:
    app = Flask("tracker")
    sessions: dict[str, str] = {}
    by_number = {t[0]: t for t in TICKETS}
    changed = settings.variant == "changed"
    search_id, search_name, button_id = (
        ("query-input", "query", "go") if changed else ("search-q", "q", "search-btn")
    )

    @app.before_request
    def gate() -> Response | None:
        if settings.basic_auth is not None:
            given = request.headers.get("Authorization", "")
            wanted = "Basic " + base64.b64encode(settings.basic_auth.encode()).decode()
            if not hmac.compare_digest(given, wanted):
                return Response(
                    "Authentication required.",
                    status=401,
                    headers={"WWW-Authenticate": 'Basic realm="tracker"'},
                )
        if request.path in ("/login", "/echo") or request.path.startswith("/static"):
            return None
        if request.cookies.get("tracker_sid") not in sessions:
            return redirect("/login")
        return None

    def login_form(error: str = "") -> Response:
        t = TEXT[language()]
        notice = f'<p class="error" role="alert">{error}</p>' if error else ""
        return page(
            t["title"],
            f"""{notice}<form method="post" action="/login" id="login">
<p><label for="user">{t["username"]}</label> <input id="user" name="user"></p>
<p><label for="pass">{t["password"]}</label> <input id="pass" name="pass" type="password"></p>
<p><button type="submit">{t["sign_in"]}</button></p></form>""",
        )

    @app.get("/login")
    def login_page() -> Response:
        return login_form()

    @app.post("/login")
    def login() -> Response:
        user, password = request.form.get("user", ""), request.form.get("pass", "")
        if user != "agent" or not hmac.compare_digest(password, settings.password):
            return login_form(TEXT[language()]["bad_login"])
        sid = secrets.token_hex(16)
        sessions[sid] = user
        response = redirect("/issues")
        response.set_cookie("tracker_sid", sid, httponly=True)
        return response

    @app.get("/logout")
    def logout() -> Response:
        sessions.pop(request.cookies.get("tracker_sid", ""), None)
        return redirect("/login")

    @app.get("/issues")
    def issues() -> Response:
        t = TEXT[language()]
        query = request.args.get(search_name, "").strip().upper()
        body = f"""<form method="get" action="/issues" id="search">
<label for="{search_id}">{t["ticket"]}</label>
<input id="{search_id}" name="{search_name}" value="{html.escape(query)}">
<button type="submit" id="{button_id}">{t["search"]}</button></form>
<p><a href="/logout">{t["sign_out"]}</a></p>"""
        if query:
            hits = [x for x in TICKETS if query in x[0]]
            if not hits:
                body += f'<p class="empty">{t["no_match"]}</p>'
            else:
                head = "".join(f"<th>{c}</th>" for c in t["columns"])
                rows = "".join(
                    f"<tr><td>{n}</td><td>{html.escape(title)}</td><td>{who}</td>"
                    f'<td>{status}</td><td><a href="/issues/{n}">{t["open"]}</a></td></tr>'
                    for n, title, who, _opened, status in hits
                )
                body += f'<table class="results"><tr>{head}</tr>{rows}</table>'
        return page(t["title"], body)

    @app.get("/issues/<number>")
    def detail(number: str) -> Response:
        t = TEXT[language()]
        ticket = by_number.get(number)
        if ticket is None:
            return Response("Not found", status=404)
        values = (ticket[0], html.escape(ticket[1]), ticket[2], "", ticket[4])
        items = "".join(
            f"<dt>{label}</dt><dd>{value}</dd>"
            for label, value in zip(t["labels"], values, strict=True)
            if label != t["labels"][3]
        )
        opened = f'<dt>{t["labels"][3]}</dt><dd><time datetime="{ticket[3]}"></time></dd>'
        # The browser shows the time in its own zone, as many web applications do.
        script = """<script>for (const el of document.querySelectorAll('time')) {
  const d = new Date(el.getAttribute('datetime'));
  const p = (n) => String(n).padStart(2, '0');
  el.textContent = d.getFullYear() + '-' + p(d.getMonth() + 1) + '-' + p(d.getDate()) +
    ' ' + p(d.getHours()) + ':' + p(d.getMinutes());
}</script>"""
        body = (
            f"<h1>{number}</h1><dl>{items}{opened}</dl>"
            f'<p><a id="attachment" href="/issues/{number}/report.png">{t["attachment"]}</a></p>'
            + script
        )
        return page(number, body)

    @app.get("/issues/<number>/report.png")
    def report(number: str) -> Response:
        ticket = by_number.get(number)
        if ticket is None:
            return Response("Not found", status=404)
        return Response(
            render_report(ticket),
            content_type="image/png",
            headers={"Content-Disposition": f'inline; filename="{number}-report.png"'},
        )

    @app.get("/echo")
    def echo() -> Response:
        import json

        return Response(json.dumps(dict(request.headers)), content_type="application/json")

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8800)
    parser.add_argument("--password", default="tracker-pass")
    parser.add_argument("--variant", choices=("normal", "changed"), default="normal")
    parser.add_argument("--basic-auth", default=None, metavar="USER:PASS")
    args = parser.parse_args(argv)
    settings = Settings(args.password, args.variant, args.basic_auth)
    server = make_server("127.0.0.1", args.port, create_app(settings), threaded=True)
    print(f"tracker=http://127.0.0.1:{server.server_port}", flush=True)
    print("ready", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()  # until SIGTERM or Ctrl-C


if __name__ == "__main__":
    main()
