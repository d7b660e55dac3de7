"""The one wrapper around the ``tesseract`` binary (through pytesseract).

Every pytesseract error is translated here: a missing binary or language, a crash and
a timeout become :class:`~stampless.errors.OcrEngineError` (a SystemFailure, retried).
OMP_THREAD_LIMIT=1 is forced for the child process: on 2-core machines Tesseract's own
OpenMP threads made it 3-6x slower; stampless runs one Tesseract per core instead.
"""

from __future__ import annotations

import os
import shutil
from functools import lru_cache

import pytesseract
from PIL import Image

from stampless.config import OcrConfig
from stampless.errors import OcrEngineError
from stampless.ocr.engine import OcrEngine, Word

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


def _edge_noise(word: Word) -> bool:
    text = word.text
    return len(text) == 1 and not ("\u3400" <= text <= "\u9fff") and word.confidence < 0.6


class TesseractEngine(OcrEngine):
    """Tesseract 5 (LSTM) through pytesseract, with word boxes and confidences."""

    name = "tesseract"

    def __init__(self, config: OcrConfig) -> None:
        self.cmd = config.tesseract_cmd or shutil.which("tesseract") or "tesseract"
        self.languages = config.languages
        self.timeout_s = config.timeout_s
        missing = set(self.languages.split("+")) - _installed_languages(self.cmd)
        if missing:
            raise OcrEngineError(
                f"Tesseract lacks the language data {', '.join(sorted(missing))}; install "
                "tesseract-ocr-chi-sim (and -eng), or change ocr.languages in robot.toml."
            )

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

    def _words(self, data: dict[str, list[str]]) -> list[Word]:
        words: list[Word] = []
        for i, text in enumerate(data["text"]):
            text = str(text).strip()
            conf = float(data["conf"][i])
            if not text or conf < 0:
                continue
            words.append(
                Word(
                    text=text,
                    confidence=max(0.0, min(1.0, conf / 100.0)),
                    box=(
                        int(data["left"][i]),
                        int(data["top"][i]),
                        int(data["width"][i]),
                        int(data["height"][i]),
                    ),
                    line=(
                        int(data["block_num"][i]),
                        int(data["par_num"][i]),
                        int(data["line_num"][i]),
                    ),
                )
            )
        return words

    def read(self, image: Image.Image, *, psm: int = 3, cjk_only: bool = False) -> list[Word]:
        lang = self._lang("cjk" if cjk_only else "any")
        return self._words(self._data(image, lang, f"--oem 1 --psm {psm}"))

    def _line(self, image: Image.Image, whitelist: str | None, lang: str) -> tuple[str, float]:
        config = "--oem 1 --psm 7"
        if whitelist:
            config += f" -c tessedit_char_whitelist={whitelist}"
        found = sorted(self._words(self._data(image, lang, config)), key=lambda w: w.box[0])
        # A crop's edges catch specks and bits of neighbouring labels, which Tesseract
        # reads as one low-confidence Latin character; they are not part of a CJK value.
        while found and _edge_noise(found[0]):
            found.pop(0)
        while found and _edge_noise(found[-1]):
            found.pop()
        if not found:
            return "", 0.0
        total = sum(len(w.text) for w in found)
        mean = sum(w.confidence * len(w.text) for w in found) / max(1, total)
        low = min(w.confidence for w in found)
        return " ".join(w.text for w in found), 0.5 * mean + 0.5 * low

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
        # One Tesseract run for all lines: starting Tesseract and loading a model costs
        # more than reading a line. Lines are stacked with white gaps and read as a block.
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
        config = "--oem 1 --psm 6"
        if whitelist:
            config += f" -c tessedit_char_whitelist={whitelist}"
        words = self._words(self._data(page, self._lang(script), config))
        texts: list[list[Word]] = [[] for _ in images]
        for w in words:
            cy = w.box[1] + w.box[3] / 2
            for i, (top, bottom) in enumerate(spans):
                if top - gap / 2 <= cy < bottom + gap / 2:
                    texts[i].append(w)
                    break
        out: list[tuple[str, float]] = []
        for found in texts:
            if not found:
                out.append(("", 0.0))
                continue
            found.sort(key=lambda w: w.box[0])
            total = sum(len(w.text) for w in found)
            mean = sum(w.confidence * len(w.text) for w in found) / max(1, total)
            low = min(w.confidence for w in found)
            out.append((" ".join(w.text for w in found), 0.5 * mean + 0.5 * low))
        return out
