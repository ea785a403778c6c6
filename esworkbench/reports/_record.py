"""What a report notebook read, recorded in the notebook itself (private; see ``reports``).

Runs inside the notebook's kernel: ``read_recorded`` reads the lake and returns a
``ReadRecord``; displaying the record stores it as an output of type ``READ_MIME`` (beside a
table for the reader), where the report runner, or anyone holding the executed notebook, finds
it with ``reads_in_notebook``. Also the other calls a report notebook starts with:
``setup_notebook`` and ``sync_first`` (with ``resolve_masked_uri`` for URIs whose password the
runner masked). A notebook's objects may also display how long their stages took, as an output
of type ``STAGES_MIME`` (seconds by stage); ``stages_in_notebook`` collects them for the
manifest's timings.
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esworkbench.config import mask_uri
from esworkbench.errors import ConfigError

if TYPE_CHECKING:
    import polars as pl

    from esworkbench.lake import Lake, SyncResult

__all__ = [
    "READ_MIME",
    "STAGES_MIME",
    "URI_ENV",
    "ReadRecord",
    "read_recorded",
    "reads_in_notebook",
    "resolve_masked_uri",
    "setup_notebook",
    "stages_in_notebook",
    "sync_first",
    "table",
]

READ_MIME = "application/vnd.esworkbench.read+json"
STAGES_MIME = "application/vnd.esworkbench.stages+json"
URI_ENV = "ESWORKBENCH_ESDB_URI"
_DATETIME_FILTERS = ("since", "until")
_ESDB_URI = re.compile(r"^(esdb|kurrentdb)(\+discover)?://", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class ReadRecord:
    """What a notebook read from the lake: enough to pin it and to re-check it later.

    Displaying a record in a notebook stores it there (MIME type ``READ_MIME``) next to a
    human-readable table; the report manifest copies it from the executed notebook.
    """

    lake: str
    filters: dict[str, Any]
    event_count: int
    first_position: int | None
    last_position: int | None
    digest: str
    head_position: int | None
    checkpoints: dict[str, int]
    read_at: str

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-ready data (filters with times as ISO 8601 text)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReadRecord:
        """The inverse of `to_json`."""
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})

    def lake_filters(self) -> dict[str, Any]:
        """The filters as keyword arguments for ``Lake.read_events`` / ``Lake.digest``."""
        return _decode_filters(self.filters)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        rows = [
            ("lake", self.lake),
            ("filters", json.dumps(self.filters) if self.filters else "(all events)"),
            ("events read", f"{self.event_count:,}"),
            ("first commit position", _text(self.first_position)),
            ("last commit position", _text(self.last_position)),
            ("digest", self.digest),
            ("lake head position", _text(self.head_position)),
            ("lake checkpoints", json.dumps(self.checkpoints) if self.checkpoints else "none"),
            ("read at (UTC)", self.read_at),
        ]
        table = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
            f"<td style='text-align:left'><code>{html.escape(v)}</code></td></tr>"
            for k, v in rows
        )
        plain = "\n".join(f"{k:>22}: {v}" for k, v in rows)
        return {
            READ_MIME: self.to_json(),
            "text/html": f"<table class='esw-read'>{table}</table>",
            "text/plain": plain,
        }


def read_recorded(lake: Lake, **filters: Any) -> tuple[pl.DataFrame, ReadRecord]:
    """Read events from the lake and record exactly what was read.

    Takes the filters of ``Lake.read_events``; returns the events and a ``ReadRecord`` whose
    digest is the lake's digest of the same filters, so ``verify_manifest`` can recompute it.

    Example:
        >>> with Lake("data/lake/workbench.duckdb", read_only=True) as lake:  # doctest: +SKIP
        ...     events, record = read_recorded(lake, category="user")
        >>> record  # displayed in a notebook: stored for the report manifest  # doctest: +SKIP
    """
    given = {k: v for k, v in filters.items() if v is not None}
    events = lake.read_events(**given)
    positions = events.get_column("commit_position")
    record = ReadRecord(
        lake=str(lake.path),  # as given: a report names no absolute path it was not given
        filters=_encode_filters(given),
        event_count=events.height,
        first_position=None if events.is_empty() else int(positions.min()),  # type: ignore[arg-type]
        last_position=None if events.is_empty() else int(positions.max()),  # type: ignore[arg-type]
        digest=lake.digest(**given),
        head_position=_int_or_none(lake.head_position()),
        checkpoints=_checkpoints(lake),
        read_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    return events, record


def reads_in_notebook(notebook: Mapping[str, Any]) -> list[ReadRecord]:
    """The read records displayed in an (executed) notebook, in cell order."""
    found = []
    for cell in notebook.get("cells", []):
        for output in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            data = output.get("data", {})
            if READ_MIME in data:
                found.append(ReadRecord.from_json(data[READ_MIME]))
    return found


def stages_in_notebook(notebook: Mapping[str, Any]) -> dict[str, float]:
    """Seconds by stage, from the ``STAGES_MIME`` outputs of an (executed) notebook.

    A stage named in several outputs adds up.

    Example:
        >>> cell = {"cell_type": "code", "outputs": [{"data": {STAGES_MIME: {"replay": 1.5}}}]}
        >>> stages_in_notebook({"cells": [cell, cell]})
        {'replay': 3.0}
    """
    found: dict[str, float] = {}
    for cell in notebook.get("cells", []):
        for output in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            for stage, seconds in output.get("data", {}).get(STAGES_MIME, {}).items():
                found[stage] = round(found.get(stage, 0.0) + float(seconds), 3)
    return found


def resolve_masked_uri(uri: str) -> str:
    """The real URI for one whose password was masked ('***') by the report runner.

    The runner injects masked URIs into notebooks and hands the real one to the kernel as
    ``ESWORKBENCH_ESDB_URI``; URIs without a masked password are returned as they are.
    """
    if mask_uri(uri) != uri or ":***@" not in uri:
        return uri
    real = os.environ.get(URI_ENV)
    if real is None or mask_uri(real) != uri:
        raise ConfigError(
            f"the URI {uri!r} has its password masked; set {URI_ENV} to the full URI (the "
            "report runner does this for you) or pass a URI without a password"
        )
    return real


def setup_notebook(*, max_rows: int = 50) -> None:
    """Prepare a report notebook's kernel: charts carry their spec, tables show more rows.

    Chart outputs then render offline in the report HTML (see ``charts.enable_renderer``);
    Polars tables show up to `max_rows` rows and every column.
    """
    import polars as pl

    from esworkbench.charts import enable_renderer

    enable_renderer()
    pl.Config.set_tbl_rows(max_rows)
    pl.Config.set_tbl_cols(-1)
    pl.Config.set_fmt_str_lengths(80)


# Ids and names stay on one line (a UUID broken over four lines is unreadable); only long
# text (messages, evidence, payloads) wraps; money is right-aligned; wide tables scroll. The
# selectors repeat the class and name the table, so they outrank JupyterLab's right-aligned cells
# (`:not(.jp-RenderedMarkdown).jp-RenderedHTMLCommon td`), in the HTML and in JupyterLab.
_TABLE_STYLE = """<style>
.ewb-table { overflow-x: auto; }
.ewb-table.ewb-table table th, .ewb-table.ewb-table table td {
  text-align: left; vertical-align: top; white-space: nowrap;
}
.ewb-table.ewb-table table td.ewb-long { white-space: normal; min-width: 28em; }
.ewb-table.ewb-table table td.ewb-money { text-align: right; }
</style>"""
_TABLE_SCRIPT = """
<script>
(function () {
  var root = document.getElementById("%(id)s");
  var rows = Array.prototype.slice.call(root.querySelectorAll("tbody tr"));
  var input = root.querySelector("input"), info = root.querySelector(".ewb-info");
  var prev = root.querySelector(".ewb-prev"), next = root.querySelector(".ewb-next");
  var size = %(size)d, page = 0, shown = rows;
  function draw() {
    var pages = Math.max(1, Math.ceil(shown.length / size));
    page = Math.min(page, pages - 1);
    rows.forEach(function (r) { r.style.display = "none"; });
    shown.slice(page * size, (page + 1) * size).forEach(function (r) { r.style.display = ""; });
    info.textContent = shown.length + " of " + rows.length + " rows, page " + (page + 1) +
      " of " + pages;
  }
  input.addEventListener("input", function () {
    var q = input.value.toLowerCase();
    shown = rows.filter(function (r) { return r.textContent.toLowerCase().indexOf(q) >= 0; });
    page = 0; draw();
  });
  prev.addEventListener("click", function () { page = Math.max(0, page - 1); draw(); });
  next.addEventListener("click", function () { page += 1; draw(); });
  draw();
})();
</script>
"""


def table(
    frame: Any, *, page_size: int = 25, caption: str = "", currency: str | None = None
) -> Any:
    """A complete table for a report: every row and full text, searchable and paged offline.

    The rows are all in the page (a reviewer's browser search finds any of them); a search box
    filters them and the pager shows `page_size` at a time, with a few lines of inline script
    and no network. Cells keep their full text, as people read them: money (Decimal columns)
    with thousands separators, two decimals and `currency`, times in UTC to the second, lists
    joined; never a dtype row or quotes around text.

    Example:
        >>> import polars as pl
        >>> html = table(pl.DataFrame({"a": [1, 2]})).data
        >>> "2 rows" in html and "<script>" in html
        True
    """
    import uuid

    import polars as pl
    from IPython.display import HTML

    data = frame if isinstance(frame, pl.DataFrame) else pl.DataFrame(frame)
    table_id = f"ewb-table-{uuid.uuid4().hex[:12]}"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in data.columns)
    money = [isinstance(t, pl.Decimal) for t in data.schema.values()]
    body = "".join(
        "<tr>"
        + "".join(
            _td(_cell(v, currency if m else None), money=m) for v, m in zip(row, money, strict=True)
        )
        + "</tr>"
        for row in data.iter_rows()
    )
    controls = (
        '<div class="ewb-controls"><input type="search" placeholder="search the table" '
        'aria-label="search the table"> <button class="ewb-prev">previous</button> '
        '<button class="ewb-next">next</button> <span class="ewb-info">'
        f"{data.height} rows</span></div>"
    )
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    markup = (
        _TABLE_STYLE + f'<div id="{table_id}" class="ewb-table">{controls}'
        f'<table class="dataframe">{cap}<thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )
    return HTML(markup + _TABLE_SCRIPT % {"id": table_id, "size": page_size})


def _td(text: str, *, money: bool) -> str:
    kind = "ewb-money" if money else ("ewb-long" if len(text) > 60 else "")
    opening = f'<td class="{kind}">' if kind else "<td>"
    return opening + html.escape(text) + "</td>"


def _cell(value: Any, currency: str | None) -> str:
    """One table cell as a person reads it."""
    from datetime import datetime
    from decimal import Decimal

    if value is None:
        return ""
    if isinstance(value, Decimal):
        text = f"{value:,.2f}"
        return f"{text} {currency}" if currency else text
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S") + (" UTC" if value.tzinfo else "")
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def sync_first(
    source: str | None, lake: str | Path, *, progress: bool = False
) -> SyncResult | None:
    """Sync a source's new events into the lake before a report reads it (exactly once).

    Args:
        source: an EventStoreDB URI (``esdb://...``; a password masked by the report runner is
            taken from ``ESWORKBENCH_ESDB_URI``) or the path of a JSONL/Parquet archive; None
            or "" does nothing.
        lake: the lake file (created if missing).
        progress: show a progress bar.

    Returns:
        What the sync did (its description has credentials masked), or None.
    """
    if not source:
        return None
    from esworkbench.config import Settings, resolve_lake_path
    from esworkbench.lake import Lake, sync
    from esworkbench.sources import EventSource

    settings = Settings.load()
    opened_source: EventSource
    if _ESDB_URI.match(source):
        from esworkbench.sources.esdb import EsdbSource

        opened_source = EsdbSource(resolve_masked_uri(source), reader=settings.reader)
    else:
        from esworkbench.sources.files import open_archive

        opened_source = open_archive(source)
    with Lake(resolve_lake_path(lake)) as opened:
        return sync(opened_source, opened, batch_size=settings.batch_size, progress=progress)


# --- helpers -------------------------------------------------------------------------------


def _encode_filters(filters: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in filters.items():
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, tuple | set | frozenset):
            value = sorted(value) if isinstance(value, set | frozenset) else list(value)
        out[key] = value
    return out


def _decode_filters(filters: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: datetime.fromisoformat(v) if k in _DATETIME_FILTERS and isinstance(v, str) else v
        for k, v in filters.items()
    }


def _checkpoints(lake: Lake) -> dict[str, int]:
    # Source keys are credential-free by contract; masking again costs nothing.
    return {mask_uri(k): int(v) for k, v in lake.summary().checkpoints.items()}


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _text(value: Any) -> str:
    return "none" if value is None else f"{value}"
