"""Debian's Chromium, headless, driven by Playwright; browsers are never downloaded."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
# Offline and quiet: no first-run UI, no update checks or sync calls to Google while a test runs.
CHROMIUM_ARGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)
VIEWPORT = {"width": 1600, "height": 1000}
TIMEOUT_MS = 60_000  # the UI's first GraphQL queries load the whole code location on 2 cores


@contextmanager
def chromium_page(profile: Path) -> Iterator[Page]:
    """A page in a fresh Chromium profile at `profile`; the browser is closed on exit."""
    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing: install Debian's chromium (scripts/bootstrap-system.sh does)")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=list(CHROMIUM_ARGS),
            viewport=VIEWPORT,
        )
        try:
            context.set_default_timeout(TIMEOUT_MS)
            context.set_default_navigation_timeout(TIMEOUT_MS)
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()
