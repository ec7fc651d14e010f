"""Check in a real headless browser, with every host name unresolvable, that DVC's plots page renders.

    python scripts/check_plots_offline.py                      # runs `dvc plots show` here, then checks its page
    python scripts/check_plots_offline.py --html dvc_plots/index.html --screenshot plots.png   # a page already written

A copy of the page gets a first script that records errors (``error`` events, rejected promises,
``console.error``; ``console.warn`` is counted apart) and every resource loaded from anywhere but the page's
own file. Chromium (Debian's ``chromium``) runs it headless, with the network cut (``--host-resolver-rules``),
and dumps the DOM after vega has rendered. The page passes when each plot div holds a rendered chart (vega's
``marks`` SVG or canvas, not empty), nothing was fetched and no error was reported. Exit status 0 when it
passes, 1 when not.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# The flags of a clean, quiet, offline headless run: no profile, no updates, no sync, no host resolves.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND",
]
# HTML elements without an end tag (Chromium's DOM dump closes every other one, SVG's included).
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
# Runs before anything else on the page; the DOM dump carries what it records in an attribute.
RECORDER = """<script>
(function () {
  var seen = {errors: [], warnings: [], fetched: []};
  function save() { document.documentElement.setAttribute("data-check", JSON.stringify(seen)); }
  function note(list, kind, parts) {
    list.push(kind + ": " + Array.prototype.map.call(parts, String).join(" "));
    save();
  }
  window.addEventListener("error", function (e) {
    note(seen.errors, "error", [e.message || "could not load " + (e.target && (e.target.src || e.target.href))]);
  }, true);
  window.addEventListener("unhandledrejection", function (e) { note(seen.errors, "unhandled rejection", [e.reason]); });
  [["error", seen.errors], ["warn", seen.warnings]].forEach(function (level) {
    var original = console[level[0]];
    console[level[0]] = function () {
      note(level[1], "console." + level[0], arguments);
      original.apply(console, arguments);
    };
  });
  new PerformanceObserver(function (list) {
    list.getEntries().forEach(function (entry) {
      if (!entry.name.startsWith("data:") && entry.name.split("#")[0] !== location.href.split("#")[0]) {
        seen.fetched.push(entry.name); save();
      }
    });
  }).observe({type: "resource", buffered: true});
  save();
})();
</script>"""


@dataclass
class Chart:
    """One plot div of the page and the vega output found inside it."""

    div_id: str
    marks: list[dict[str, str]] = field(default_factory=list)

    @property
    def rendered(self) -> bool:
        return any(float(m.get("width", 0) or 0) > 0 and float(m.get("height", 0) or 0) > 0 for m in self.marks)


class PageParser(HTMLParser):
    """Collects DVC's plot divs (``<div id = ...>`` directly in ``<body>``) and vega's ``marks`` elements in each."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: list[Chart] = []
        self.check: dict[str, list[str]] = {}
        self._stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "html" and "data-check" in values:
            self.check = json.loads(values["data-check"])
        if tag == "div" and self._stack == ["html", "body"] and "id" in values:
            self.charts.append(Chart(values["id"]))
        if tag in ("svg", "canvas") and "marks" in values.get("class", "").split() and self.charts:
            self.charts[-1].marks.append(values)
        if tag not in VOID:
            self._stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self._stack:
            del self._stack[len(self._stack) - 1 - self._stack[::-1].index(tag) :]


def browser(name: str | None) -> str:
    found = shutil.which(name) if name else next(filter(None, map(shutil.which, BROWSERS)), None)
    if not found:
        sys.exit(f"error: no {name or ' / '.join(BROWSERS)} on PATH; on Debian: apt-get install -y chromium")
    return found


def show_plots(out_dir: Path) -> Path:
    """``dvc plots show`` in the project as a user runs it (only the output folder moved): its page."""
    dvc = shutil.which("dvc", path=str(Path(sys.executable).parent)) or "dvc"  # this environment's, else PATH's
    proc = subprocess.run([dvc, "plots", "show", "-o", str(out_dir)], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"error: dvc plots show failed:\n{proc.stderr.strip()}")
    return out_dir / "index.html"


def run_browser(exe: str, page: Path, scratch: Path, budget_ms: int, screenshot: Path | None) -> PageParser:
    """Load ``page`` with the recorder in front, offline; parse the DOM after ``budget_ms`` of virtual time."""
    text = page.read_text(encoding="utf-8")
    checked = scratch / "checked.html"
    checked.write_text(text.replace("<head>", "<head>\n" + RECORDER, 1), encoding="utf-8")
    base = [exe, *FLAGS, f"--user-data-dir={scratch / 'profile'}", f"--virtual-time-budget={budget_ms}"]
    dom = subprocess.run([*base, "--dump-dom", checked.as_uri()], capture_output=True, text=True, timeout=300)
    if dom.returncode != 0 or "<html" not in dom.stdout:
        sys.exit(f"error: {exe} did not load {page}:\n{dom.stderr.strip()[-2000:]}")
    if screenshot is not None:
        subprocess.run(
            [
                *base,
                "--hide-scrollbars",
                "--window-size=1400,6000",
                f"--screenshot={screenshot.resolve()}",
                checked.as_uri(),
            ],
            capture_output=True,
            timeout=300,
            check=True,
        )
    parser = PageParser()
    parser.feed(dom.stdout)
    return parser


def expected_plots() -> int:
    """How many charts dvc.yaml defines (its top-level ``plots:``; no stage declares plots of its own)."""
    return len(yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["plots"])


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--html", type=Path, help="a page already written (default: run `dvc plots show` first)")
    args.add_argument("--browser", help=f"the browser to run (default: the first of {', '.join(BROWSERS)})")
    args.add_argument("--screenshot", type=Path, help="also save a screenshot of the page as this PNG")
    args.add_argument("--warnings", action="store_true", help="list the console warnings too (they do not fail)")
    args.add_argument("--budget-ms", type=int, default=30000, help="virtual time to let vega render (ms)")
    opts = args.parse_args()
    exe = browser(opts.browser)
    with tempfile.TemporaryDirectory(prefix="check-plots-") as tmp:
        scratch = Path(tmp)
        page = opts.html or show_plots(scratch / "dvc_plots")
        parsed = run_browser(exe, page, scratch, opts.budget_ms, opts.screenshot)
    blank = [c.div_id for c in parsed.charts if not c.rendered]
    fetched, errors = parsed.check.get("fetched", []), parsed.check.get("errors", [])
    problems = [f"not rendered: {name}" for name in blank] + [f"fetched: {url}" for url in fetched] + errors
    if not parsed.check:
        problems.append("the recorder did not run: no script ran on the page")
    if opts.html is None and len(parsed.charts) != expected_plots():
        problems.append(f"{len(parsed.charts)} plot divs on the page, dvc.yaml defines {expected_plots()}")
    warnings = Counter(parsed.check.get("warnings", []))
    print(
        f"{page}: {len(parsed.charts) - len(blank)} of {len(parsed.charts)} charts rendered offline, "
        f"{len(fetched)} resources fetched, {len(errors)} errors, {warnings.total()} warnings"
    )
    for problem in problems:
        print(f"  {problem}")
    if opts.warnings:
        for warning, count in warnings.most_common():
            print(f"  {count} x {warning}")
    sys.exit(1 if problems or not parsed.charts else 0)


if __name__ == "__main__":
    main()
