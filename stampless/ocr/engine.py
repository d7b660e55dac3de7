"""The small interface every OCR engine implements, and the words it returns.

An engine turns an image (already preprocessed) into words with boxes and confidences.
Everything else (finding labels, normalizing, deciding) is engine-independent, so a
second engine can be asked for a second opinion on the same region and the two
readings compared.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class Word:
    """One recognised word (for CJK often one character) in image coordinates."""

    text: str
    confidence: float  # 0..1
    box: tuple[int, int, int, int]  # left, top, width, height
    line: tuple[int, int, int] = (0, 0, 0)  # (block, paragraph, line): words of one text line


def words_confidence(words: list[Word]) -> float:
    """One confidence 0..1 for a run of words: half their mean, weighted by characters
    (a one-character word should not outweigh an ID number), half the weakest word."""
    if not words:
        return 0.0
    total = sum(len(w.text) for w in words)
    mean = sum(w.confidence * len(w.text) for w in words) / max(1, total)
    return 0.5 * mean + 0.5 * min(w.confidence for w in words)


class OcrEngine(ABC):
    """An OCR engine. Implementations must be safe to call from several threads."""

    name: str = "engine"

    @abstractmethod
    def read(self, image: Image.Image, *, psm: int = 3, cjk_only: bool = False) -> list[Word]:
        """Read every word of ``image`` (a page or a region), in reading order.

        ``psm`` is the page-segmentation hint in Tesseract's numbering (3 a whole page,
        6 a uniform block, 7 a single line); engines without the notion ignore it.
        ``cjk_only`` lets an engine use its CJK model alone (which reads digits too): on
        these documents it finds labels as well as CJK+Latin and in three quarters of the
        time.
        Raises OcrEngineError when the engine is missing, crashes or times out.
        """

    @abstractmethod
    def read_lines(
        self,
        images: list[Image.Image],
        *,
        whitelist: str | None = None,
        script: str = "any",
    ) -> list[tuple[str, float]]:
        """Read each image as one line of text; return ``(text, confidence 0..1)`` each.

        ``whitelist`` restricts the characters (``0123456789X`` for an ID number) where
        the engine supports it; ``script`` is ``"latin"`` (no CJK expected: a faster,
        more accurate Latin model), ``"cjk"`` or ``"any"``. Engines may read the images
        in one call (Tesseract stacks them into one page), so passing many small images
        at once is cheaper than one at a time.
        """

    def detect_orientation(self, image: Image.Image) -> tuple[int, float] | None:
        """Clockwise degrees (0, 90, 180, 270) that make ``image`` upright, with the
        engine's confidence; None when the engine cannot tell (the default)."""
        return None

    def read_line(
        self, image: Image.Image, *, whitelist: str | None = None, script: str = "any"
    ) -> tuple[str, float]:
        """Read one image as one line of text (see :meth:`read_lines`)."""
        return self.read_lines([image], whitelist=whitelist, script=script)[0]
