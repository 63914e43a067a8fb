"""A real browser for tests: the system's Chromium (Debian's ``chromium``), driven by the
Playwright Python package, which never downloads a browser here: it is launched with the system
binary as ``executable_path``, headless, with a fresh profile and no background networking
(without those flags Chromium's own connections are refused by a closed network and slow it).

A missing Chromium or Playwright skips the test with the reason; with ``HEIMER_REQUIRE_SERVERS=1``
(CI, whose ``.ci/run`` installs ``chromium``) it fails instead, like the server tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from .servers import unavailable

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]  # fmt: skip


def chromium_path() -> str | None:
    """The system Chromium: ``HEIMER_CHROMIUM``, else Debian's path, else ``chromium`` on the PATH."""
    for candidate in (os.environ.get("HEIMER_CHROMIUM"), *CHROMIUM_CANDIDATES, shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@contextlib.contextmanager
def chromium_page(viewport=(1400, 1000)):
    """A Playwright page in the system Chromium (fresh profile, deleted afterwards)."""
    binary = chromium_path()
    if binary is None:
        unavailable("Chromium not found (Debian package `chromium`, or HEIMER_CHROMIUM=/path/to/chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the Playwright Python package is not installed (it is in the test extras: ./dev.sh setup)")
    profile = Path(tempfile.mkdtemp(prefix="heimer-chromium-"))
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                str(profile), executable_path=binary, headless=True, args=CHROMIUM_ARGS,
                viewport={"width": viewport[0], "height": viewport[1]})  # fmt: skip
            try:
                yield context.pages[0] if context.pages else context.new_page()
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
