"""Regenerate docs/report.jpg: the report `make run` writes, as headless chromium shows it.

    python tools/report_screenshot.py [--out docs/report.jpg]

Runs `avminer mine --profile sample` (what `make run` runs) into a temporary directory, opens its
report in Debian's chromium (selenium + chromedriver, as the browser test does) and saves the top of
the page. Needs chromium and chromium-driver (tools/test-services.sh installs them).
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "docs" / "report.jpg"), help="JPEG to write")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1180)
    args = parser.parse_args()
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_path:
        sys.exit("needs chromium and chromedriver: run tools/test-services.sh")

    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "avminer.cli.main", "mine", "--profile", "sample"], cwd=tmp,
                       check=True, capture_output=True)
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={args.width},{args.height}"):
            options.add_argument(arg)
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
        try:
            driver.get((Path(tmp) / "avminer-out" / "report" / "index.html").as_uri())
            png = driver.get_screenshot_as_png()
        finally:
            driver.quit()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.open(io.BytesIO(png)).convert("RGB").save(out, format="JPEG", quality=85, optimize=True)
    print(f"wrote {out} ({out.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
