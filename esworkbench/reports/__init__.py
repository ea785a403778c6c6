"""Report notebooks: run them with papermill, render offline HTML, pin what they read.

The public face of the reports stage. Inside: `_runner` (papermill runs and manifests),
`_parameters` (declared, typed, checked parameters; where notebooks are found), `_verify`
(re-reading what a report read), `_record` (the kernel-side helpers a notebook calls:
`read_recorded`, `setup_notebook`, `sync_first`, `table`), `_html` (offline HTML), and one
module per report (`balance_timeline`, `anomaly_report`, `projection_rebuild`) holding the
computations its notebook shows. The notebooks themselves ship in ``reports/notebooks/``.

papermill, nbconvert, nbformat and vl-convert are imported inside the functions that use them,
so ``import esworkbench.reports`` stays light.

Example:
    >>> from esworkbench.reports import notebook_parameters
    >>> "lake" in notebook_parameters(NOTEBOOKS_DIR / "balance_timeline.ipynb")
    True
"""

from esworkbench.reports._html import external_urls, render_html
from esworkbench.reports._parameters import (
    NOTEBOOKS_DIR,
    accepts,
    list_reports,
    notebook_parameters,
    parse_parameters,
    read_parameters_file,
)
from esworkbench.reports._record import (
    READ_MIME,
    STAGES_MIME,
    URI_ENV,
    ReadRecord,
    read_recorded,
    reads_in_notebook,
    resolve_masked_uri,
    setup_notebook,
    stages_in_notebook,
    sync_first,
    table,
)
from esworkbench.reports._runner import ReportCellError, ReportResult, run_report, skip_iri_grammar
from esworkbench.reports._verify import VerifyResult, verify_manifest

__all__ = [
    "NOTEBOOKS_DIR",
    "READ_MIME",
    "STAGES_MIME",
    "URI_ENV",
    "ReadRecord",
    "ReportCellError",
    "ReportResult",
    "VerifyResult",
    "accepts",
    "external_urls",
    "list_reports",
    "notebook_parameters",
    "parse_parameters",
    "read_parameters_file",
    "read_recorded",
    "reads_in_notebook",
    "render_html",
    "resolve_masked_uri",
    "run_report",
    "setup_notebook",
    "skip_iri_grammar",
    "stages_in_notebook",
    "sync_first",
    "table",
    "verify_manifest",
]
