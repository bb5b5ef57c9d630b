"""A real headless browser for tests: Debian's chromium driven through its chromedriver by
selenium (no browser download: both come from scripts/install-browser.sh, which `make browser`,
`make integration` and `make test` run), and the artefacts directory screenshots go to.
"""

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

# Chromium's own network traffic (updates, sync, field trials) is refused on a closed machine,
# many connections at a time: these flags keep it to the page under test.
FLAGS = (
    "--headless=new",
    "--no-sandbox",  # the tests run as root in CI
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,900",
)

# The page's edge table, read from the rendered DOM (what a person sees), one dict per row.
EDGE_ROWS = """
return [...document.querySelectorAll('#edge-table tbody tr')].map(tr => {
  const row = {edge: tr.dataset.edge, health: tr.dataset.health};
  for (const td of tr.querySelectorAll('td')) row[td.dataset.col] = td.textContent;
  return row;
});
"""


def binary(name: str) -> str:
    """Path of `chromium` or `chromedriver`; fails the test naming the install script."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: run scripts/install-browser.sh (make browser does)")
    return path


@contextmanager
def chromium(profile: Path) -> Iterator[webdriver.Chrome]:
    """A headless chromium with a fresh profile in `profile`, quit on exit."""
    options = webdriver.ChromeOptions()
    options.binary_location = binary("chromium")
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(binary("chromedriver")), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def edge_rows(driver: webdriver.Chrome) -> dict[str, dict[str, Any]]:
    """The dashboard's edge table by edge id ("default/frontend->default/catalog-v1")."""
    rows: list[dict[str, Any]] = driver.execute_script(EDGE_ROWS)
    return {row["edge"]: row for row in rows}


def artefacts_dir(base: Path) -> Path:
    """Where screenshots go: $LIGHTMESH_ARTEFACTS, or `base` (pytest's temporary directory)."""
    target = Path(os.environ.get("LIGHTMESH_ARTEFACTS", "") or base)
    target.mkdir(parents=True, exist_ok=True)
    return target
