"""A real headless Chromium (Debian's ``chromium`` package) driven by Playwright, for the HTML
report's tests. No browser is ever downloaded: the system one is used, and its absence fails
the test with the command that installs it.

    with Browser() as browser:
        page = browser.open(path)          # loads the file, collects console errors
        page.errors                         # console messages of type "error" + page errors
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("SEGRAY_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    """The system Chromium, or a test failure saying how to install it (CI installs it)."""
    path = CHROMIUM if os.path.isfile(CHROMIUM) else shutil.which("chromium")
    if not path:
        pytest.fail(
            f"no Chromium at {CHROMIUM}: install Debian's package (`apt-get install chromium`, "
            "as .ci/run does) or set SEGRAY_CHROMIUM to a Chromium binary",
            pytrace=False,
        )
    return path


@dataclass
class Opened:
    """A loaded page and what went wrong while loading it."""

    page: Any
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # every URL the page asked for

    def broken_images(self) -> list[str]:
        """``alt`` of every <img> that has not decoded (naturalWidth 0), after all loaded."""
        return self.page.evaluate(
            """() => Array.from(document.images)
                 .filter(img => !(img.complete && img.naturalWidth > 0))
                 .map(img => img.alt || img.src.slice(0, 60))"""
        )

    def image_count(self) -> int:
        return self.page.evaluate("() => document.images.length")

    def column(self, table: str, name: str) -> list[str]:
        """The texts of column ``name`` of ``table`` (a CSS selector), top to bottom."""
        return self.page.evaluate(
            """([sel, name]) => {
                 const t = document.querySelector(sel);
                 const heads = Array.from(t.tHead.rows[0].cells).map(c => c.textContent.trim());
                 const i = heads.indexOf(name);
                 if (i < 0) throw new Error("no column " + name + " in " + heads.join(","));
                 return Array.from(t.tBodies[0].rows).map(r => r.cells[i].textContent.trim());
               }""",
            [table, name],
        )

    def click_header(self, table: str, name: str) -> None:
        self.page.locator(f"{table} thead th", has_text=name).first.click()

    def screenshot(self, path: Path, *, selector: str | None = None, full: bool = True) -> Path:
        if selector is None:
            self.page.screenshot(path=str(path), full_page=full)
        else:
            self.page.locator(selector).screenshot(path=str(path))
        return path


class Browser:
    """One headless Chromium for a block; `open` loads a file and records its errors."""

    def __init__(self, width: int = 1400, height: int = 900) -> None:
        self.size = {"width": width, "height": height}

    def __enter__(self) -> Browser:
        from playwright.sync_api import sync_playwright

        executable = chromium_path()
        self._pw = sync_playwright().start()
        try:
            self._browser = self._pw.chromium.launch(executable_path=executable, args=ARGS)
        except Exception:
            self._pw.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._browser.close()
        self._pw.stop()

    def open(self, path: Path | str) -> Opened:
        page = self._browser.new_page(viewport=self.size)
        opened = Opened(page)
        page.on(
            "console",
            lambda msg: (
                opened.errors.append(f"console: {msg.text}") if msg.type == "error" else None
            ),
        )
        page.on("pageerror", lambda e: opened.errors.append(f"pageerror: {e}"))
        page.on("request", lambda req: opened.requests.append(req.url))
        page.goto(Path(path).resolve().as_uri(), wait_until="load")
        page.wait_for_function(
            "() => Array.from(document.images).every(img => img.complete)", timeout=15_000
        )
        return opened
