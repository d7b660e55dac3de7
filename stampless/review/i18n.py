"""The console's languages, times and field labels.

Simplified Chinese is the default (``[review] language``, robot.toml), English the other
choice; a reviewer switches with the links in the header (remembered in a cookie). Texts
are gettext messages: the English text is the message id, the Chinese is in
``locale/zh_CN/LC_MESSAGES/messages.po``, read with Babel when first needed (no compiled
``.mo`` file to keep in step). Times are shown in ``[review] timezone`` (default: the
machine's), fields by the labels printed on the document (the task module's).
"""

from __future__ import annotations

import gettext as _gettext
import io
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from stampless.config import Config

LANGUAGES = {"zh-CN": "简体中文", "en": "English"}
DEFAULT_LANGUAGE = "zh-CN"
LANG_COOKIE = "stampless_lang"
LOCALE_DIR = Path(__file__).with_name("locale")
_CATALOGS = {"zh-CN": "zh_CN"}  # English is the message ids themselves


def N_(message: str) -> str:
    """Mark ``message`` for the catalog without translating it here."""
    return message


# Words the console shows for values of the data, translated where they are shown.
WORDS = {
    "verdict": {
        "verified": N_("verified"),
        "mismatch": N_("mismatch"),
        "not_found": N_("not found"),
        "needs_review": N_("needs review"),
        "error": N_("error"),
    },
    "status": {
        "match": N_("match"),
        "mismatch": N_("mismatch"),
        "unreadable": N_("unreadable"),
        "near_miss": N_("near miss"),
        "missing": N_("missing"),
    },
    "tier": {"instant": N_("instant tier"), "robot": N_("robot tier"), "manual": N_("manual tier")},
    "role": {"reviewer": N_("reviewer"), "admin": N_("administrator")},
    "circuit": {"closed": N_("closed"), "open": N_("open"), "half_open": N_("half open")},
}


@cache
def translations(lang: str) -> _gettext.NullTranslations:
    """The catalog of ``lang`` (a key of :data:`LANGUAGES`)."""
    code = _CATALOGS.get(lang)
    if code is None:
        return _gettext.NullTranslations()
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    with (LOCALE_DIR / code / "LC_MESSAGES" / "messages.po").open("rb") as f:
        catalog = read_po(f, locale=code)
    compiled = io.BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return _gettext.GNUTranslations(compiled)


def word(lang: str, kind: str, value: str) -> str:
    """How the console names ``value`` of ``kind`` (a verdict, a status, a tier...)."""
    message = WORDS.get(kind, {}).get(value)
    return translations(lang).gettext(message) if message else value


def zone_of(config: Config) -> ZoneInfo | None:
    """The console's time zone (None: the machine's)."""
    name = config.review.timezone
    return ZoneInfo(name) if name else None


def localtime(value: datetime | None, zone: ZoneInfo | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """``value`` in ``zone``, with the zone's abbreviation when the format shows seconds."""
    if value is None:
        return "–"
    local = value.astimezone(zone)
    text = local.strftime(fmt)
    return f"{text} {local.strftime('%Z')}" if "%S" in fmt else text


@cache
def _field_labels(task: Path) -> dict[str, str]:
    from stampless.doctype import load_doctype_file

    doctype = load_doctype_file(task)
    labels: dict[str, str] = {}
    for spec in doctype.fields:
        label = spec.labels[0]
        # 身份证件号 is printed once per person: the second is the spouse's.
        shared = [s for s in doctype.fields if s.labels[0] == label]
        labels[spec.name] = f"{label} ({shared.index(spec) + 1})" if len(shared) > 1 else label
    return labels


def field_label(config: Config, type_name: str, name: str) -> str:
    """The printed label of field ``name`` of ``type_name``, or the name when unknown."""
    type_config = config.types.get(type_name)
    if type_config is None:
        return name
    try:
        labels = _field_labels(type_config.task)
    except Exception:  # a task module that no longer loads: the name still says it
        return name
    return labels.get(name, name)


def type_label(config: Config, type_name: str) -> str:
    """The document's printed title (结婚证), or the type's name when unknown."""
    from stampless.doctype import load_doctype

    try:
        return load_doctype(config, type_name).title
    except Exception:
        return type_name
