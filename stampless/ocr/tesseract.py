"""The Tesseract engine: the system's libtesseract in-process, or the ``tesseract`` command.

By default (``ocr.tesseract_library = "auto"``) stampless calls the library the command
is built on (:mod:`.libtesseract`), which saves the command's start-up and model
loading on every call (~0.125 s, more than most field reads). Without the library, or
with ``ocr.tesseract_library = "off"`` or an explicit ``ocr.tesseract_cmd``, it runs the
command through pytesseract. Both give the same words for the same image.

Every error is translated here: a missing binary or language, a crash and a timeout
become :class:`~stampless.errors.OcrEngineError` (a SystemFailure, retried).
OMP_THREAD_LIMIT=1 is forced: on 2-core machines Tesseract's own OpenMP threads made it
3-6x slower; stampless runs one Tesseract per core instead.
"""

from __future__ import annotations

import os
import shutil
from functools import lru_cache

import pytesseract
from PIL import Image

from stampless.config import OcrConfig
from stampless.errors import OcrEngineError
from stampless.ocr.engine import OcrEngine, Word, words_confidence
from stampless.ocr.libtesseract import HandlePool, find_library, load_library

# Tesseract reads OMP_THREAD_LIMIT from its environment, which pytesseract inherits.
os.environ.setdefault("OMP_THREAD_LIMIT", "1")


@lru_cache(maxsize=8)
def _installed_languages(cmd: str) -> frozenset[str]:
    pytesseract.pytesseract.tesseract_cmd = cmd
    try:
        return frozenset(pytesseract.get_languages(config=""))
    except (pytesseract.TesseractNotFoundError, FileNotFoundError) as exc:
        raise OcrEngineError(
            "Tesseract is not installed; install tesseract-ocr and tesseract-ocr-chi-sim, "
            "or set ocr.tesseract_cmd in robot.toml."
        ) from exc
    except (pytesseract.TesseractError, OSError) as exc:
        raise OcrEngineError(f"Tesseract does not run ({exc}); reinstall tesseract-ocr.") from exc


def _word(
    text: str, conf: float, box: tuple[int, int, int, int], line: tuple[int, int, int]
) -> Word | None:
    text = text.strip()
    if not text or conf < 0:
        return None
    return Word(text=text, confidence=max(0.0, min(1.0, conf / 100.0)), box=box, line=line)


def _dict_words(data: dict[str, list[str]]) -> list[Word]:
    """Words of pytesseract's image_to_data dictionary."""
    words = []
    for i, text in enumerate(data["text"]):
        word = _word(
            str(text),
            float(data["conf"][i]),
            (
                int(data["left"][i]),
                int(data["top"][i]),
                int(data["width"][i]),
                int(data["height"][i]),
            ),
            (int(data["block_num"][i]), int(data["par_num"][i]), int(data["line_num"][i])),
        )
        if word is not None:
            words.append(word)
    return words


def _tsv_words(tsv: str) -> list[Word]:
    """Words of Tesseract's TSV (level, page, block, par, line, word, box, conf, text)."""
    words = []
    for row in tsv.splitlines():
        cols = row.split("\t")
        if len(cols) < 12 or cols[0] != "5":  # level 5: a word
            continue
        left, top, width, height = (int(c) for c in cols[6:10])
        word = _word(
            cols[11],
            float(cols[10]),
            (left, top, width, height),
            (int(cols[2]), int(cols[3]), int(cols[4])),
        )
        if word is not None:
            words.append(word)
    return words


def _edge_noise(word: Word) -> bool:
    text = word.text
    return len(text) == 1 and not ("\u3400" <= text <= "\u9fff") and word.confidence < 0.6


class TesseractEngine(OcrEngine):
    """Tesseract 5 (LSTM), with word boxes and confidences."""

    name = "tesseract"

    def __init__(self, config: OcrConfig) -> None:
        self.languages = config.languages
        self.timeout_s = config.timeout_s
        library = find_library(config)
        self.pool: HandlePool | None = load_library(library).pool if library else None
        self.cmd = config.tesseract_cmd or shutil.which("tesseract") or "tesseract"
        if self.pool is not None:
            with self.pool.handle(self.languages):  # loads the models once, or says what is missing
                pass
            return
        missing = set(self.languages.split("+")) - _installed_languages(self.cmd)
        if missing:
            raise OcrEngineError(
                f"Tesseract lacks the language data {', '.join(sorted(missing))}; install "
                "tesseract-ocr-chi-sim (and -eng), or change ocr.languages in robot.toml."
            )

    @property
    def backend(self) -> str:
        """Where the words come from: the library's file, or the command."""
        return self.pool.tess.path if self.pool is not None else self.cmd

    def _recognize(
        self, image: Image.Image, lang: str, psm: int, whitelist: str | None = None
    ) -> list[Word]:
        if self.pool is not None:
            with self.pool.handle(lang) as handle:
                return _tsv_words(handle.tsv(image, psm, whitelist, self.timeout_s))
        config = f"--oem 1 --psm {psm}"
        if whitelist:
            config += f" -c tessedit_char_whitelist={whitelist}"
        return _dict_words(self._data(image, lang, config))

    def detect_orientation(self, image: Image.Image) -> tuple[int, float] | None:
        """Clockwise degrees that make ``image`` upright and the confidence, or None."""
        if self.pool is not None:
            with self.pool.handle("osd") as handle:
                found = handle.orientation(image)
            return (found.degrees, found.confidence) if found else None
        pytesseract.pytesseract.tesseract_cmd = self.cmd
        try:
            osd = pytesseract.image_to_osd(
                image, config="--psm 0", output_type=pytesseract.Output.DICT
            )
        except (pytesseract.TesseractError, RuntimeError, OSError):
            return None
        return int(osd.get("rotate", 0)) % 360, float(osd.get("orientation_conf", 0))

    def _data(self, image: Image.Image, lang: str, config: str) -> dict[str, list[str]]:
        pytesseract.pytesseract.tesseract_cmd = self.cmd
        try:
            data: dict[str, list[str]] = pytesseract.image_to_data(
                image,
                lang=lang,
                config=config,
                output_type=pytesseract.Output.DICT,
                timeout=self.timeout_s,
            )
        except pytesseract.TesseractNotFoundError as exc:
            raise OcrEngineError(
                "Tesseract is not installed; install tesseract-ocr, or set ocr.tesseract_cmd."
            ) from exc
        except RuntimeError as exc:  # pytesseract's timeout
            raise OcrEngineError(
                f"Tesseract took longer than {self.timeout_s:g} s (ocr.timeout_s); "
                "try again or raise the limit."
            ) from exc
        except (pytesseract.TesseractError, OSError) as exc:
            raise OcrEngineError(f"Tesseract failed on an image ({exc}); try again.") from exc
        return data

    def _lang(self, script: str) -> str:
        parts = self.languages.split("+")
        if script == "latin" and "eng" in parts:
            return "eng"
        if script == "cjk":
            cjk = [p for p in parts if p.startswith("chi")]
            return "+".join(cjk) or self.languages
        return self.languages

    def read(self, image: Image.Image, *, psm: int = 3, cjk_only: bool = False) -> list[Word]:
        return self._recognize(image, self._lang("cjk" if cjk_only else "any"), psm)

    def _line(self, image: Image.Image, whitelist: str | None, lang: str) -> tuple[str, float]:
        found = sorted(self._recognize(image, lang, 7, whitelist), key=lambda w: w.box[0])
        # A crop's edges catch specks and bits of neighbouring labels, which Tesseract
        # reads as one low-confidence Latin character; they are not part of a CJK value.
        while found and _edge_noise(found[0]):
            found.pop(0)
        while found and _edge_noise(found[-1]):
            found.pop()
        return " ".join(w.text for w in found), words_confidence(found)

    def read_lines(
        self,
        images: list[Image.Image],
        *,
        whitelist: str | None = None,
        script: str = "any",
    ) -> list[tuple[str, float]]:
        if not images:
            return []
        if script == "cjk":
            # CJK lines are read one by one: stacked with other lines, Tesseract's CJK
            # model misread names it reads correctly alone (邱 as 匈, 霞 as 起).
            return [self._line(im, whitelist, self._lang(script)) for im in images]
        # One Tesseract run for all lines, stacked with white gaps and read as a block:
        # with the command this saved its start-up per line; it is also how these reads
        # were measured (bench/RESULTS.md), so the library keeps it.
        gap = 24
        width = max(im.width for im in images) + 2 * gap
        height = sum(im.height for im in images) + gap * (len(images) + 1)
        page = Image.new("L", (width, height), 255)
        spans: list[tuple[int, int]] = []
        y = gap
        for im in images:
            page.paste(im.convert("L"), (gap, y))
            spans.append((y, y + im.height))
            y += im.height + gap
        words = self._recognize(page, self._lang(script), 6, whitelist)
        texts: list[list[Word]] = [[] for _ in images]
        for w in words:
            cy = w.box[1] + w.box[3] / 2
            for i, (top, bottom) in enumerate(spans):
                if top - gap / 2 <= cy < bottom + gap / 2:
                    texts[i].append(w)
                    break
        out: list[tuple[str, float]] = []
        for found in texts:
            found.sort(key=lambda w: w.box[0])
            out.append((" ".join(w.text for w in found), words_confidence(found)))
        return out
