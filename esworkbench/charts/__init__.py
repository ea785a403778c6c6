"""Chart builders: a frame in, an altair chart out.

Every builder takes a Polars (or pandas) frame of the shape the fold and the timeline helpers
produce and returns an altair chart; none reads the lake or replays anything. altair is imported
inside the functions, so ``import esworkbench`` stays light.

Two boundaries are handled here and nowhere else:

- **Money is exact upstream and float only on the chart.** Decimal columns are cast to float when
  the frame becomes chart data (JSON has no decimal), never before.
- **Charts stay small, and say when they aggregate.** A chart embeds its data, so builders
  refuse to embed more than ``max_points`` rows. Balance timelines denser than their pixels are
  drawn per stream per time bucket (``bucket_timeline``: the balance each bucket ends with and
  the lowest and highest it held), and their subtitle names the bucket; the others expect
  resampled frames.

Charts are interactive wherever Vega runs (JupyterLab, the report HTML). ``enable_renderer``
makes notebook outputs also carry the Vega-Lite spec itself, which the report runner turns into
an offline rendering (see ``esworkbench.reports``).

Inside: `_data` (frames as chart data: casts, sizes, labels, tooltips), `_buckets` (timelines
aggregated per time bucket), `_render` (offline SVG and the notebook renderer), `_balance` (the
balance charts), `_activity` (findings over time, projection lag).
"""

from esworkbench.charts._activity import findings_over_time, projection_lag
from esworkbench.charts._balance import (
    balance_heatmap,
    balance_small_multiples,
    balance_timeline,
    bank_total,
)
from esworkbench.charts._buckets import (
    BUCKET_STEPS,
    MIN_BUCKET_PIXELS,
    bucket_timeline,
    choose_bucket,
    spell_bucket,
)
from esworkbench.charts._data import DEFAULT_MAX_POINTS, plot_frame, short_label
from esworkbench.charts._render import (
    SPEC_MIME_PREFIX,
    enable_renderer,
    static_svg,
    vega_lite_version,
)

__all__ = [
    "BUCKET_STEPS",
    "DEFAULT_MAX_POINTS",
    "MIN_BUCKET_PIXELS",
    "SPEC_MIME_PREFIX",
    "balance_heatmap",
    "balance_small_multiples",
    "balance_timeline",
    "bank_total",
    "bucket_timeline",
    "choose_bucket",
    "enable_renderer",
    "findings_over_time",
    "plot_frame",
    "projection_lag",
    "short_label",
    "spell_bucket",
    "static_svg",
    "vega_lite_version",
]
