"""Regenerate ``docs/qa_sheet.png``: the QA sheet of the sample data as headless Chromium shows it.

Run from anywhere: ``python docs/make_qa_screenshot.py`` (needs Pillow, ``pip install -e ".[qa]"``,
and Chromium, ``apt-get install chromium``). The sample data is written to a temporary folder
(``examples/data/make_sample_data.py``), its sheet made with ``pt.qa_sheet`` and screenshot; the
PNG is reduced to a palette to stay small (< 150 KB).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUTPUT = HERE / 'qa_sheet.png'
#: Browser window: the table and the first two subjects.
WINDOW = (1000, 1060)


def chromium() -> str:
    """The Chromium executable (raises when none is installed)."""
    for name in ('chromium', 'chromium-browser', 'google-chrome'):
        if shutil.which(name):
            return shutil.which(name)
    raise SystemExit('Chromium is needed: apt-get install chromium')


def main() -> int:
    sys.path.insert(0, str(ROOT))
    import pyable_tio as pt
    from PIL import Image

    spec = importlib.util.spec_from_file_location('make_sample_data', ROOT / 'examples' / 'data' / 'make_sample_data.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)  # the sheet names the manifest as given: sample_manifest.json
        module.make_sample_data(folder)
        report = pt.qa_sheet('sample_manifest.json', out='qa.html')
        shot = Path(folder) / 'shot.png'
        command = [chromium(), '--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars',
                   f'--window-size={WINDOW[0]},{WINDOW[1]}', f'--screenshot={shot}', report.html.resolve().as_uri()]
        subprocess.run(command, check=True, capture_output=True, timeout=120)
        image = Image.open(shot).convert('RGB').quantize(colors=64, method=Image.Quantize.MEDIANCUT)
        image.save(OUTPUT, optimize=True)
    print(f'wrote {OUTPUT} ({OUTPUT.stat().st_size // 1024} KB)')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
