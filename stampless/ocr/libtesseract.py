"""Tesseract's C API (``capi.h``) through ctypes: the library the ``tesseract`` command uses.

Starting the ``tesseract`` command and loading its model costs about 0.125 s a call on
these machines, longer than reading a field's line; a page needs eight such calls. This
module loads ``libtesseract`` once per process and keeps initialised ``TessBaseAPI``
handles, one per language and thread at a time, so a call costs only the recognition.

Why ctypes and not tesserocr: tesserocr's wheels bundle their own Tesseract (5.5), which
read these scans measurably differently from Debian's 5.3 with the same models, and
building it against the system library needs a compiler and -dev packages on every
machine. The C API has been stable since Tesseract 4 and is the system's own library, so
results are the command's results.

ctypes releases the GIL during a foreign call, so handles in different threads recognise
in parallel. A deadline (``TessMonitorSetDeadlineMSecs``) enforces ``ocr.timeout_s``.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import os
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import Image

from stampless.config import OcrConfig
from stampless.errors import OcrEngineError

# Tesseract's OpenMP threads fight each other on small machines; set before loading.
os.environ.setdefault("OMP_THREAD_LIMIT", "1")

_OEM_LSTM_ONLY = 1
_L_SEVERITY_NONE = 6
_P = ctypes.c_void_p


@dataclass(frozen=True)
class Orientation:
    degrees: int  # clockwise rotation that makes the page upright
    confidence: float


class TessLibrary:
    """``libtesseract`` loaded once, with the prototypes of the functions stampless calls."""

    def __init__(self, path: str) -> None:
        try:
            lib = ctypes.CDLL(path)
        except OSError as exc:
            raise OcrEngineError(
                f"Cannot load the Tesseract library {path} ({exc}); install tesseract-ocr "
                'or set ocr.tesseract_library = "off" in robot.toml.'
            ) from exc
        self.path = path
        sig = {
            "TessVersion": (ctypes.c_char_p, []),
            "TessBaseAPICreate": (_P, []),
            "TessBaseAPIDelete": (None, [_P]),
            "TessBaseAPIInit2": (
                ctypes.c_int,
                [_P, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int],
            ),
            "TessBaseAPISetVariable": (ctypes.c_bool, [_P, ctypes.c_char_p, ctypes.c_char_p]),
            "TessBaseAPISetPageSegMode": (None, [_P, ctypes.c_int]),
            "TessBaseAPISetImage": (
                None,
                [_P, ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int],
            ),
            "TessBaseAPIRecognize": (ctypes.c_int, [_P, _P]),
            "TessBaseAPIGetTsvText": (_P, [_P, ctypes.c_int]),
            "TessBaseAPIClear": (None, [_P]),
            "TessBaseAPIDetectOrientationScript": (
                ctypes.c_bool,
                [
                    _P,
                    ctypes.POINTER(ctypes.c_int),
                    ctypes.POINTER(ctypes.c_float),
                    ctypes.POINTER(ctypes.c_char_p),
                    ctypes.POINTER(ctypes.c_float),
                ],
            ),
            "TessDeleteText": (None, [_P]),
            "TessMonitorCreate": (_P, []),
            "TessMonitorDelete": (None, [_P]),
            "TessMonitorSetDeadlineMSecs": (None, [_P, ctypes.c_int]),
        }
        for name, (restype, argtypes) in sig.items():
            try:
                fn = getattr(lib, name)
            except AttributeError as exc:
                raise OcrEngineError(
                    f"The Tesseract library {path} lacks {name}; install Tesseract 4 or newer "
                    'or set ocr.tesseract_library = "off" in robot.toml.'
                ) from exc
            fn.restype = restype
            fn.argtypes = argtypes
        self.lib = lib
        self.version = (lib.TessVersion() or b"?").decode()
        # One pool of initialised handles per library and process, shared by every engine.
        self.pool = HandlePool(self)
        _quiet_leptonica()


def _quiet_leptonica() -> None:
    """Stop Leptonica printing "Error in boxClipToRectangle" and the like to stderr.

    Tesseract reports failures through return values; these messages are noise in a
    worker's log (the command's went to pytesseract's pipe, unread).
    """
    name = ctypes.util.find_library("lept") or ctypes.util.find_library("leptonica")
    if name is None:
        return
    try:
        lept = ctypes.CDLL(name)
        lept.setMsgSeverity.argtypes = [ctypes.c_int]
        lept.setMsgSeverity(_L_SEVERITY_NONE)
    except (OSError, AttributeError):
        return


_libraries: dict[str, TessLibrary] = {}
_libraries_lock = threading.Lock()


@atexit.register
def _close_pools() -> None:
    # Handles deleted before the library's own static destructors run, which otherwise
    # print "WARNING! LEAK!" for every model still loaded at exit.
    for tess in _libraries.values():
        tess.pool.close()


def find_library(config: OcrConfig) -> str | None:
    """The library file OCR reads with, or None for the ``tesseract`` command.

    None when ``ocr.tesseract_cmd`` names a command or ``ocr.tesseract_library`` is
    "off"; "auto" looks the library up; anything else is the library's path.
    """
    setting = config.tesseract_library
    if config.tesseract_cmd or setting == "off":
        return None
    if setting != "auto":
        return setting
    return ctypes.util.find_library("tesseract")


def load_library(path: str) -> TessLibrary:
    """The library at ``path``, loaded once per process."""
    with _libraries_lock:
        if path not in _libraries:
            _libraries[path] = TessLibrary(path)
        return _libraries[path]


class _Handle:
    """One initialised TessBaseAPI: one language, used by one thread at a time."""

    def __init__(self, tess: TessLibrary, lang: str) -> None:
        self.lib = tess.lib
        self.ptr = self.lib.TessBaseAPICreate()
        if self.lib.TessBaseAPIInit2(self.ptr, None, lang.encode(), _OEM_LSTM_ONLY) != 0:
            self.lib.TessBaseAPIDelete(self.ptr)
            raise OcrEngineError(
                f"Tesseract cannot load the language data {lang}; install "
                "tesseract-ocr-chi-sim (and -eng), or change ocr.languages in robot.toml."
            )
        # Tesseract's diagnostics ("Estimating resolution as 218") go to stderr unless
        # sent elsewhere; the command's were swallowed by pytesseract, these are dropped.
        self.lib.TessBaseAPISetVariable(self.ptr, b"debug_file", os.devnull.encode())
        self.whitelist = ""

    def set_image(self, image: Image.Image) -> None:
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB" if image.mode in ("RGBA", "P", "CMYK") else "L")
        depth = 1 if image.mode == "L" else 3
        data = image.tobytes()
        self.lib.TessBaseAPISetImage(
            self.ptr, data, image.width, image.height, depth, image.width * depth
        )
        # No source resolution is passed, as with the command (pytesseract's PNG carries
        # none): Tesseract estimates it from the text, and a scan's declared DPI is
        # wrong anyway once preprocessing has rescaled the page.

    def tsv(self, image: Image.Image, psm: int, whitelist: str | None, timeout_s: float) -> str:
        wanted = whitelist or ""
        if wanted != self.whitelist:
            self.lib.TessBaseAPISetVariable(self.ptr, b"tessedit_char_whitelist", wanted.encode())
            self.whitelist = wanted
        self.lib.TessBaseAPISetPageSegMode(self.ptr, psm)
        self.set_image(image)
        monitor = self.lib.TessMonitorCreate()
        try:
            self.lib.TessMonitorSetDeadlineMSecs(monitor, max(1, round(timeout_s * 1000)))
            if self.lib.TessBaseAPIRecognize(self.ptr, monitor) != 0:
                raise OcrEngineError(
                    f"Tesseract took longer than {timeout_s:g} s (ocr.timeout_s) or failed "
                    "on an image; try again or raise the limit."
                )
            text = self.lib.TessBaseAPIGetTsvText(self.ptr, 0)
            if not text:
                return ""
            try:
                return ctypes.string_at(text).decode("utf-8", "replace")
            finally:
                self.lib.TessDeleteText(text)
        finally:
            self.lib.TessMonitorDelete(monitor)
            self.lib.TessBaseAPIClear(self.ptr)

    def orientation(self, image: Image.Image) -> Orientation | None:
        self.lib.TessBaseAPISetPageSegMode(self.ptr, 0)  # PSM_OSD_ONLY
        self.set_image(image)
        degrees = ctypes.c_int()
        conf = ctypes.c_float()
        script = ctypes.c_char_p()
        script_conf = ctypes.c_float()
        try:
            ok = self.lib.TessBaseAPIDetectOrientationScript(
                self.ptr,
                ctypes.byref(degrees),
                ctypes.byref(conf),
                ctypes.byref(script),
                ctypes.byref(script_conf),
            )
        finally:
            self.lib.TessBaseAPIClear(self.ptr)
        if not ok:
            return None
        # The C API reports the page's orientation (counter-clockwise), as `tesseract
        # --psm 0` prints under "Orientation in degrees"; "Rotate" is its complement.
        return Orientation(degrees=(360 - degrees.value) % 360, confidence=conf.value)

    def close(self) -> None:
        self.lib.TessBaseAPIDelete(self.ptr)


class HandlePool:
    """Idle initialised handles per language; a thread borrows one for one call.

    Loading chi_sim takes ~0.1 s and ~40 MB, so handles are kept; the pool grows to the
    number of threads that read at once and no further. One pool per library and process.
    """

    def __init__(self, tess: TessLibrary) -> None:
        self.tess = tess
        self._idle: dict[str, list[_Handle]] = defaultdict(list)
        self._lock = threading.Lock()

    @contextmanager
    def handle(self, lang: str) -> Iterator[_Handle]:
        with self._lock:
            idle = self._idle[lang]
            handle = idle.pop() if idle else None
        if handle is None:
            handle = _Handle(self.tess, lang)
        try:
            yield handle
        finally:
            with self._lock:
                self._idle[lang].append(handle)

    def close(self) -> None:
        with self._lock:
            for handles in self._idle.values():
                for handle in handles:
                    handle.close()
            self._idle.clear()
