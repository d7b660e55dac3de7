"""Reading an ``<img>`` in a test page once it has arrived."""

from __future__ import annotations

from typing import Any

# A click returns once the next page has committed, and an image may still be on its
# way then: wait for it to load (or fail, which leaves the width at 0).
_LOADED_WIDTH = """img => img.complete ? img.naturalWidth : new Promise(done => {
    const width = () => done(img.naturalWidth);
    img.addEventListener("load", width);
    img.addEventListener("error", width);
})"""


def loaded_width(image: Any) -> int:
    """The natural width of the image behind a Playwright locator, once it has loaded."""
    return int(image.evaluate(_LOADED_WIDTH))
