"""The HTML page that ``dvc plots show`` and ``dvc plots diff`` fill, with vega, vega-lite and vega-embed inline.

DVC's own page loads the three libraries from a CDN, so offline it stays blank. ``.dvc/config`` names this
page (``plots.html_template``, a path relative to ``.dvc/``, ignored by git); ``make setup`` writes it there
with the JavaScript bundle that the installed vl-convert-python ships (about 0.9 MB), so every
``dvc_plots/index.html`` renders without network and can be passed around as one file. ``python -m
detox.common.plots_page`` writes it again, e.g. after vl-convert-python was upgraded.
"""

from __future__ import annotations

import os
from pathlib import Path

import vl_convert
from dvc.exceptions import NotDvcRepoError
from dvc.repo import Repo

from detox.common.cli import run_stage
from detox.common.errors import DetoxError
from detox.common.io import write_text

# dvc_render fills these in the page; DVC puts its CDN <script> tags into {scripts}, so this page has none.
PLACEHOLDERS = ("{plot_divs}", "{refresh_tag}", "{scripts}")


def vega_lite_version() -> str:
    """The newest Vega-Lite 5 in the installed vl-convert: DVC's templates are Vega-Lite 5 specs (``$schema``
    v5), which vega-embed would flag on every chart if its Vega-Lite were of another major version."""
    versions = [v for v in vl_convert.get_vegalite_versions() if v.startswith("5.")]
    if not versions:
        raise DetoxError(
            f"vl-convert-python {vl_convert.__version__} bundles no Vega-Lite 5: "
            "install the version pyproject.toml asks for (pip install -e .)"
        )
    return max(versions, key=lambda v: tuple(int(part) for part in v.split(".")))


def page_template(bundle: str) -> str:
    """DVC's page layout with ``bundle`` (JavaScript that defines ``vegaEmbed``) inline instead of CDN scripts."""
    if "</script" in bundle.lower() or any(p in bundle for p in PLACEHOLDERS):
        raise ValueError("the JavaScript bundle holds '</script' or a placeholder of DVC's page: it cannot be inlined")
    return (
        '<!DOCTYPE html>\n<html>\n<head>\n    {refresh_tag}\n    <meta charset="utf-8">\n'
        "    <title>DVC Plot</title>\n"
        f'    <script type="text/javascript">\n{bundle}\n    </script>\n'
        "    <style>\n        table { border-spacing: 15px; }\n    </style>\n"
        "</head>\n<body>\n    {plot_divs}\n</body>\n</html>\n"
    )


def configured_page(root: str | Path | None = None) -> Path:
    """Where DVC reads the page: ``plots.html_template`` of the project's DVC config, as ``dvc plots`` resolves
    it (relative to ``.dvc/``). ``root``: the project, or None for the one around the working directory."""
    try:
        repo = Repo(root)
    except NotDvcRepoError as exc:
        raise DetoxError(f"{exc}: run it in the project's folder (where dvc.yaml is)") from exc
    try:
        name = repo.config.get("plots", {}).get("html_template")
        if not name:
            raise DetoxError(
                f"{repo.dvc_dir}/config names no plots.html_template: restore it from git "
                "(git checkout .dvc/config) or set it: dvc config plots.html_template plots-page.html"
            )
        return Path(os.path.join(repo.dvc_dir, name))
    finally:
        repo.close()


def write_page(path: str | Path) -> Path:
    """Write the page template with the installed vl-convert's vega, vega-lite and vega-embed to ``path``."""
    path = Path(path)
    write_text(path, page_template(vl_convert.javascript_bundle(vl_version=vega_lite_version())))
    return path


def main() -> None:
    print(f"wrote {write_page(configured_page())}: dvc plots show / diff render offline")


if __name__ == "__main__":
    run_stage(main)
