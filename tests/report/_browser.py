"""Headless Chromium for the report tests: render a page, collect what a reader's browser would see.

:func:`check_page` copies the page with a small probe script inserted first in ``<head>`` (it records
``error`` events, including images that fail to load, and ``console.error`` calls; on ``load`` it
measures every image and figure and the page's horizontal overflow and writes the result as JSON into
the DOM), runs ``chromium --headless --dump-dom`` and parses that JSON back. :func:`screenshot` renders
the unmodified page to a PNG. No Python dependency: only the ``chromium`` binary (Debian package
``chromium``); :func:`chromium` returns None when it is absent.
"""
from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

PROBE = """<script>
window.__fortifyErrors = [];
window.addEventListener('error', function (e) {
  var t = e.target;
  var what = (t && t !== window && (t.alt || t.src || t.tagName)) ? 'resource failed: ' + String(t.alt || t.src || t.tagName).slice(0, 80)
             : 'script error: ' + e.message;
  window.__fortifyErrors.push(what);
}, true);
(function () { var ce = console.error; console.error = function () {
  window.__fortifyErrors.push('console.error: ' + Array.prototype.join.call(arguments, ' ')); ce.apply(console, arguments); }; })();
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var figs = Array.prototype.slice.call(document.querySelectorAll('figure'));
  var box = function (el) { var r = el.getBoundingClientRect(); return [Math.round(r.width), Math.round(r.height)]; };
  var out = {
    title: document.title,
    images: imgs.map(function (i) { return {alt: i.alt, complete: i.complete, natural: [i.naturalWidth, i.naturalHeight], box: box(i)}; }),
    figures: figs.map(function (f) { return {caption: (f.textContent || '').slice(0, 80), box: box(f)}; }),
    overflow_px: document.documentElement.scrollWidth - document.documentElement.clientWidth,
    errors: window.__fortifyErrors,
    card: !!document.getElementById('card'),
    links_broken: Array.prototype.slice.call(document.querySelectorAll('a[href^="#"]')).filter(function (a) {
      return !document.getElementById(a.getAttribute('href').slice(1)); }).map(function (a) { return a.getAttribute('href'); })
  };
  var pre = document.createElement('pre'); pre.id = 'fortify-probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--allow-file-access-from-files"]


def chromium() -> str | None:
    """The Chromium binary (``$FORTIFY_CHROMIUM``, then ``chromium``, ``chromium-browser``), or None."""
    env = os.environ.get("FORTIFY_CHROMIUM")
    if env and Path(env).is_file():
        return env
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run(args: list[str], tmp: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(tmp)}  # a private profile, no dbus session needed
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, check=False)


def check_page(page: Path, tmp: Path, *, width: int = 1280, timeout: float = 60.0) -> dict[str, Any]:
    """Render ``page`` in headless Chromium and return the probe's findings: ``images`` (alt, complete,
    natural size, rendered box), ``figures`` (caption, box), ``overflow_px`` (horizontal overflow of the
    page), ``errors`` (failed resources, script errors, console.error), ``links_broken`` (in-page anchors
    without a target), ``card`` (a report card is present)."""
    exe = chromium()
    assert exe is not None, "chromium not installed"
    text = page.read_text(encoding="utf-8")
    probed = tmp / f"probe-{page.name}"
    probed.write_text(text.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    res = _run([exe, *FLAGS, f"--window-size={width},1000", "--virtual-time-budget=10000", "--dump-dom",
                probed.as_uri()], tmp, timeout)
    start = res.stdout.find("<pre id=\"fortify-probe\">")
    assert start >= 0, f"no probe output from chromium (rc {res.returncode}): {res.stderr[-800:]}"
    body = res.stdout[start + len("<pre id=\"fortify-probe\">"):res.stdout.index("</pre>", start)]
    return json.loads(html.unescape(body))


def screenshot(page: Path, png: Path, tmp: Path, *, width: int = 1280, height: int = 2400,
               timeout: float = 60.0) -> Path:
    """A PNG of ``page`` as headless Chromium renders it (``width`` x ``height`` CSS pixels)."""
    exe = chromium()
    assert exe is not None, "chromium not installed"
    png.parent.mkdir(parents=True, exist_ok=True)
    res = _run([exe, *FLAGS, f"--window-size={width},{height}", "--virtual-time-budget=10000",
                f"--screenshot={png}", page.as_uri()], tmp, timeout)
    assert png.is_file() and png.stat().st_size > 0, f"no screenshot (rc {res.returncode}): {res.stderr[-800:]}"
    return png
