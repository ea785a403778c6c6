"""Chart outputs that render offline: the static SVG and the spec a notebook output carries."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["SPEC_MIME_PREFIX", "enable_renderer", "static_svg", "vega_lite_version"]

# Notebook outputs carrying a Vega-Lite spec use this MIME type prefix (+ "vN+json").
# The spec travels under a MIME type of our own: nbconvert and JupyterLab have renderers for
# Vega-Lite's that fetch Vega from a CDN (or none for altair's version), and would pick them
# over the static SVG beside it; an unknown type leaves the SVG to show.
SPEC_MIME_PREFIX = "application/vnd.esworkbench.vegalite."
_RENDERER = "esworkbench"


def enable_renderer() -> None:
    """Make notebook charts render with no network, and carry their Vega-Lite spec.

    Each chart output is a static SVG (drawn by vl-convert in the kernel) plus the spec under
    ``application/vnd.esworkbench.vegalite.vN+json``. JupyterLab and a plain
    ``jupyter nbconvert`` show the SVG, offline: altair's default output loads Vega from a CDN
    (nothing renders without a network), and JupyterLab has no renderer for the Vega-Lite
    version altair writes. The report runner replaces the SVG with the same SVG plus an inline,
    interactive Vega rendering. Calling it twice is harmless.
    """
    import altair as alt

    if alt.renderers.active == _RENDERER:
        return
    mime = f"{SPEC_MIME_PREFIX}{alt.SCHEMA_VERSION.split('.')[0]}+json"

    def render(spec: dict[str, Any], **metadata: Any) -> Any:
        title = spec.get("title")
        text = title.get("text") if isinstance(title, dict) else title
        return {
            "image/svg+xml": static_svg(spec),
            mime: spec,
            "text/plain": f"<chart: {text or 'untitled'}>",
        }, {}

    alt.renderers.register(_RENDERER, render)
    alt.renderers.enable(_RENDERER)


def vega_lite_version(spec: dict[str, Any]) -> tuple[int, int]:
    """The vl-convert Vega-Lite version closest to (not above) the spec's ``$schema`` version.

    Raises:
        ValueError: vl-convert knows no version of that major (upgrade vl-convert-python).
    """
    import vl_convert as vlc

    available = sorted(tuple(int(p) for p in v.split(".")[:2]) for v in vlc.get_vegalite_versions())
    match = re.search(r"/v(\d+)\.(\d+)", str(spec.get("$schema", "")))
    wanted = (int(match[1]), int(match[2])) if match else available[-1]
    same_major = [v for v in available if v[0] == wanted[0] and v <= wanted]
    if not same_major:
        raise ValueError(
            f"vl-convert cannot render Vega-Lite {wanted[0]}.{wanted[1]} charts "
            f"(it knows {available}); upgrade vl-convert-python"
        )
    return same_major[-1]  # type: ignore[return-value]


def static_svg(spec: dict[str, Any]) -> str:
    """A chart spec drawn as SVG text, offline (vl-convert), without an XML declaration.

    The picture carries no ARIA description per mark: Vega writes every mark's fields into an
    ``aria-label``, half the bytes of a chart of a few thousand marks, which nobody reads off a
    static picture (the interactive chart that replaces it in a report describes itself).
    """
    import vl_convert as vlc

    major, minor = vega_lite_version(spec)
    quiet = {**spec, "config": {**spec.get("config", {}), "aria": False}}
    svg = vlc.vegalite_to_svg(quiet, vl_version=f"{major}.{minor}")
    return re.sub(r"^<\?xml[^>]*>\s*", "", svg)
