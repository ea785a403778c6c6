"""Offline HTML for executed report notebooks (private; ``esworkbench.reports`` re-exports).

Nbconvert's lab template loads require.js, MathJax and mermaid from CDNs, and altair's usual
chart output loads Vega from one; a report must open with no network at all. So:

- each chart output (one carrying its Vega-Lite spec, see ``charts.enable_renderer``) becomes a
  static SVG rendered by vl-convert, which any reader sees (scripts off, print, e-mail
  previews), plus the spec as inline JSON;
- one inline ``<script type="module">`` holds Vega, Vega-Lite and vega-embed (vl-convert's
  JavaScript bundle, ~0.9 MB, included once per page) and swaps every SVG for the interactive
  chart (tooltips, brush zoom, legend selection), marking it ``data-esw-rendered="true"``; the
  bundle is made once per vl-convert version and kept in ``~/.cache/esworkbench`` (or
  ``$XDG_CACHE_HOME/esworkbench``), with a digest that is checked when it is read back;
- HTML outputs (charts, tables) are placed after nbconvert has rewritten its page, so its
  BeautifulSoup pass does not walk thousands of SVG elements and table cells;
- a template derived from ``lab`` drops every CDN script (math in markdown stays as typed);
- the result is scanned: any URL the page would fetch is an error, not a warning.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Mapping
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from esworkbench.charts import SPEC_MIME_PREFIX, static_svg, vega_lite_version
from esworkbench.errors import ReportError

__all__ = ["external_urls", "render_html"]

_TEMPLATE_NAME = "esworkbench_offline.html.j2"
# The lab template, minus every script it would fetch from a CDN, plus one inline Vega bundle.
_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block extra_css -%}
<style>.esw-chart { margin: 0.5em 0; } .esw-chart svg { max-width: 100%; height: auto; }</style>
{%- endblock extra_css -%}
{%- block footer_js -%}
{%- if resources.esw_vega_bundle -%}
<script type="module" data-esw-bundle>{{ resources.esw_vega_bundle }}</script>
{%- endif -%}
{%- endblock footer_js -%}
"""
# Runs inside vl-convert's bundle, where vegaEmbed is in scope. Each chart's static SVG stays
# visible until its interactive twin has rendered (and stays if rendering fails).
_EMBED_SNIPPET = """
for (const box of document.querySelectorAll("div.esw-chart")) {
  const spec = JSON.parse(box.querySelector("script.esw-chart-spec").textContent);
  const target = document.createElement("div");
  box.appendChild(target);
  vegaEmbed(target, spec, {renderer: "svg", actions: false}).then((result) => {
    box.querySelector(".esw-chart-static")?.remove();
    audit(box, result.view.scenegraph().root);
    box.dataset.eswRendered = "true";
  }).catch((err) => { target.remove(); box.dataset.eswError = String(err); });
}
// What a reader would notice: a tooltip that reads NaN, a small-multiple panel with no marks.
// The counts land on the chart's box, where a headless browser check reads them.
function audit(box, root) {
  let tooltips = 0, unreadable = 0, panels = 0, empty = 0;
  const marks = (item) => (item.items || []).reduce((n, mark) =>
    n + (mark.marktype === "group" ? (mark.items || []).reduce((m, g) => m + marks(g), 0)
         : (mark.role === "mark" ? (mark.items || []).length : 0)), 0);
  const walk = (node) => {
    for (const item of node.items || []) {
      if (item.tooltip != null) {
        tooltips += 1;
        if (/NaN|Invalid Date/.test(JSON.stringify(item.tooltip))) unreadable += 1;
      }
      if (node.marktype === "group" && (node.name === "cell" || node.role === "cell")) {
        panels += 1;
        if (marks(item) === 0) empty += 1;
      }
      walk(item);
    }
  };
  walk(root);
  Object.assign(box.dataset, {eswTooltips: tooltips, eswUnreadableTooltips: unreadable,
                              eswPanels: panels, eswEmptyPanels: empty});
}
"""


def render_html(
    notebook: str | Path,
    html_path: str | Path,
    *,
    no_input: bool = False,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Render an executed notebook as self-contained HTML that opens without any network.

    Charts (outputs carrying a Vega-Lite spec) become a static SVG plus an interactive
    rendering by an inline Vega bundle; nbconvert's CDN scripts are left out; images are
    embedded. Raises ``ReportError`` if any external URL would still be fetched.

    Args:
        notebook: the executed notebook.
        html_path: where to write the HTML.
        no_input: hide code cells and prompts (for reviewers).
        provenance: what the page was made from (parameters, source with credentials masked,
            positions, digest, versions, notebook hash), shown as the page's last section with
            a link to ``manifest.json`` beside it; shown with ``no_input`` too.
    """
    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(notebook), as_version=4)
    slots, versions = _replace_chart_outputs(nb)
    if provenance is not None:
        nb.cells.append(nbformat.v4.new_markdown_cell(_provenance_markdown(provenance)))
    exporter = HTMLExporter(
        template_name="lab",
        extra_loaders=[DictLoader({_TEMPLATE_NAME: _TEMPLATE})],
        template_file=_TEMPLATE_NAME,
        exclude_input=no_input,
        exclude_input_prompt=no_input,
        exclude_output_prompt=no_input,
        embed_images=True,
    )
    resources: dict[str, Any] = {"metadata": {"name": Path(notebook).stem}}
    if versions:
        resources["esw_vega_bundle"] = _vega_bundle(max(versions))
    page, _ = exporter.from_notebook_node(nb, resources=resources)
    body = _fill_slots(page, slots)
    fetched = [u for kind, u in external_urls(body) if kind != "link"]
    if fetched:
        raise ReportError(
            f"the HTML of {notebook} would fetch {len(fetched)} external URL(s), e.g. "
            f"{fetched[:3]}; display charts after charts.enable_renderer() and embed images"
        )
    out = Path(html_path)
    out.write_text(body, encoding="utf-8")
    return out


def _provenance_markdown(provenance: Mapping[str, Any]) -> str:
    """The provenance section: one table row per fact, values as compact JSON or text."""
    lines = [
        "## Provenance",
        "",
        "What this page was made from. The full record is [manifest.json](manifest.json), "
        "beside this file; `esworkbench verify` checks the lake and the files against it.",
        "",
        "| | |",
        "|---|---|",
    ]
    for key, value in provenance.items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        cell = str(text).replace("|", "\\|")  # a pipe would end the table cell
        lines.append(f"| **{key}** | `{cell}` |")
    return "\n".join(lines)


_URL_ATTRIBUTES = frozenset(
    ("src", "href", "xlink:href", "srcset", "data", "poster", "action", "background")
)


def external_urls(html_text: str) -> list[tuple[str, str]]:
    """External URLs an HTML page refers to, as (kind, url).

    Kinds: "fetch", loaded when the page opens (src, <link href>, CSS url() and @import);
    "script", named inside an inline script that could load it (altair's usual output builds
    CDN <script> tags this way); "link", an <a href> a reader may click. The inline Vega
    bundle (``data-esw-bundle``) and data scripts (JSON) are not searched: their URLs are
    identifiers ($schema) and links the embed options switch off.
    """
    found: list[tuple[str, str]] = []
    external = re.compile(r"^\s*(https?:)?//", re.IGNORECASE)

    class _Scan(HTMLParser):
        inside = ""  # "style", "script" (an executable one we search), or ""

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            named = dict(attrs)
            kind = (named.get("type") or "text/javascript").lower()
            executable = kind in ("text/javascript", "module", "application/javascript")
            self.inside = {"style": "style", "script": "script"}.get(tag, "")
            if tag == "script" and (not executable or "data-esw-bundle" in named):
                self.inside = ""
            for key, value in attrs:
                if value and key in _URL_ATTRIBUTES and external.match(value):
                    found.append(("link" if tag == "a" and key == "href" else "fetch", value))
                if key == "style" and value:
                    found.extend(("fetch", u) for u in _css_urls(value))

        def handle_data(self, data: str) -> None:
            if self.inside == "style":
                found.extend(("fetch", u) for u in _css_urls(data))
            elif self.inside == "script":
                found.extend(("script", u) for u in re.findall(r"https?://[^\s\"'`)]+", data))

        def handle_endtag(self, tag: str) -> None:
            self.inside = ""

    _Scan(convert_charrefs=True).feed(html_text)
    return found


def _css_urls(css: str) -> list[str]:
    pattern = r"""(?:url\(\s*["']?|@import\s+["'])\s*((?:https?:)?//[^"')\s]+)"""
    return re.findall(pattern, css, re.IGNORECASE)


# nbconvert parses and rewrites its whole page with BeautifulSoup, which takes seconds over a
# chart's thousands of SVG elements or a table of every finding, and changes nothing in them.
# So every HTML output (charts, tables) goes in as an empty slot, filled once nbconvert is done;
# the finished page is still scanned whole for external URLs.
_SLOT = '<div data-esw-slot="{}"></div>'
_SLOTS = re.compile(r'<div data-esw-slot="(\d+)"></div>')
# Output types nbconvert's HTML exporter displays rather than an output's text/html.
_PREFERRED_TO_HTML = frozenset(
    ("application/vnd.jupyter.widget-view+json", "application/javascript")
)


def _replace_chart_outputs(nb: Any) -> tuple[list[str], list[tuple[int, int]]]:
    """Swap each HTML output for a slot; return each slot's markup and the versions seen.

    A chart output's markup becomes its static SVG and its spec (see the module docstring).
    """
    slots: list[str] = []
    versions = []
    for cell in nb.cells:
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            data = output.get("data", {})
            key = next((k for k in data if k.startswith(SPEC_MIME_PREFIX)), None)
            if key is None:
                # Only where nbconvert shows the HTML (it prefers a widget or script output).
                if "text/html" in data and not _PREFERRED_TO_HTML.intersection(data):
                    slots.append(_joined(data["text/html"]))
                    data["text/html"] = _SLOT.format(len(slots) - 1)
                continue
            spec = data[key]
            version = _vl_version(spec)
            versions.append(version)
            # The kernel drew this spec's SVG already (charts.enable_renderer); drawing it again
            # here took as long as drawing it there.
            svg = _joined(data.get("image/svg+xml"))
            if not svg:
                try:
                    svg = static_svg(spec)
                except Exception as e:  # vl-convert raises plain ValueErrors on bad specs
                    raise ReportError(f"cannot render a chart of {cell.get('id', '?')}: {e}") from e
            spec_json = json.dumps(spec, separators=(",", ":")).replace("<", "\\u003c")
            slots.append(
                f'<div class="esw-chart"><div class="esw-chart-static">{svg}</div>'
                f'<script type="application/json" class="esw-chart-spec">{spec_json}'
                "</script></div>"
            )
            output["data"] = {
                "text/html": _SLOT.format(len(slots) - 1),
                "text/plain": data.get("text/plain", "<chart>"),
            }
    return slots, versions


def _fill_slots(page: str, slots: list[str]) -> str:
    """The page with each slot replaced by its markup; every slot exactly once."""
    filled: list[int] = []

    def fill(match: re.Match[str]) -> str:
        filled.append(int(match[1]))
        return slots[int(match[1])]

    body = _SLOTS.sub(fill, page)
    if sorted(filled) != list(range(len(slots))):
        raise ReportError(
            f"the page holds output slots {sorted(filled)} for {len(slots)} output(s); "
            "nbconvert changed the markup they are placed by"
        )
    return body


def _joined(text: Any) -> str:
    """A notebook's multi-line string (a str, or a list of lines as nbformat may store it)."""
    return "".join(text) if isinstance(text, list) else str(text or "")


def _vl_version(spec: Mapping[str, Any]) -> tuple[int, int]:
    """The vl-convert Vega-Lite version for a spec (see ``charts.vega_lite_version``)."""
    try:
        return vega_lite_version(dict(spec))
    except ValueError as e:
        raise ReportError(str(e)) from e


@functools.cache
def _vega_bundle(version: tuple[int, int]) -> str:
    """vl-convert's JavaScript bundle with the embed snippet, made once per version and kept.

    Making it takes vl-convert a second or two, as long as the rest of a render; it depends
    only on vl-convert's version, the Vega-Lite version and the snippet, so it is kept under
    the user's cache directory by a digest of the three and made again when any changes (or
    when the cache cannot be read or written).
    """
    from importlib import metadata

    import vl_convert as vlc

    vl_version = f"{version[0]}.{version[1]}"
    key = f"{metadata.version('vl-convert-python')}\n{vl_version}\n{_EMBED_SNIPPET}"
    kept = _cache_dir() / f"vega-bundle-{hashlib.sha256(key.encode()).hexdigest()[:24]}.js"
    try:
        text = kept.read_text(encoding="utf-8")
        body, _, digest = text.rpartition("\n// sha256:")
        if digest == hashlib.sha256(body.encode()).hexdigest():  # else damaged: make it again
            return body
    except OSError:
        pass
    bundle: str = vlc.javascript_bundle(_EMBED_SNIPPET, vl_version=vl_version)
    # An inline script ends at the first "</script" whatever the quotes; escape it in strings.
    bundle = re.sub(r"</(script)", r"<\\/\1", bundle, flags=re.IGNORECASE)
    try:
        kept.parent.mkdir(parents=True, exist_ok=True)
        partial = kept.with_name(f"{kept.name}.{os.getpid()}.partial")
        digest = hashlib.sha256(bundle.encode()).hexdigest()
        partial.write_text(f"{bundle}\n// sha256:{digest}", encoding="utf-8")
        partial.replace(kept)  # whole or not at all, whoever renders at the same time
    except OSError:
        pass
    return bundle


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "esworkbench"
