"""Blue/green: two read models over one pinned window, diffed by key, column by column.

``compare`` rebuilds two projections (typically two versions of one) over the same window
(same first and last commit position) and diffs their rows: keys only in A, only in B, and
keys in both whose shared columns differ, with each changed column's value in A and in B.
Values keep their types in the wide frames; the long frame of changes shows them as text (one
column for every type), and for numeric columns the exact difference (money stays Decimal).

Example:
    >>> result = compare("data/lake/demo.duckdb",
    ...                  "esworkbench.examples.bank.projections:AccountSummaryV1",
    ...                  "esworkbench.examples.bank.projections:AccountSummaryV2")  # doctest: +SKIP
    >>> result.diff.summary  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import polars as pl

from esworkbench.errors import ConfigError
from esworkbench.lake import Lake
from esworkbench.projections._definition import ProjectionLike, resolve_projection
from esworkbench.projections._rebuild import RebuildResult, _writable, pin_window, rebuild

__all__ = ["Comparison", "ReadModelDiff", "compare", "diff_read_models"]


@dataclasses.dataclass(frozen=True)
class ReadModelDiff:
    """How read model B differs from read model A, by key.

    Attributes:
        key: the key column.
        only_in_a: rows of A whose key B lacks.
        only_in_b: rows of B whose key A lacks.
        changed_rows: keys in both with a difference: the key, then ``<column>_a`` and
            ``<column>_b`` for every shared column that differs somewhere.
        changes: one row per (key, column) that differs: ``a`` and ``b`` as text, and
            ``delta`` (b - a, as text, exact) for numeric columns.
        summary: counts: rows in A and B, keys only in A, only in B, changed, unchanged, and
            per changed column how many keys differ in it.
        largest: the numeric changes with the largest absolute difference first.
    """

    key: str
    only_in_a: pl.DataFrame
    only_in_b: pl.DataFrame
    changed_rows: pl.DataFrame
    changes: pl.DataFrame
    summary: pl.DataFrame
    largest: pl.DataFrame

    @property
    def keys(self) -> list[str]:
        """Every key that differs (only in A, only in B, or changed), sorted."""
        found = set(self.only_in_a[self.key].to_list()) | set(self.only_in_b[self.key].to_list())
        return sorted(found | set(self.changed_rows[self.key].to_list()))

    @property
    def identical(self) -> bool:
        """True when A and B hold the same rows (on their shared columns)."""
        return not self.keys


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Two rebuilds over one window, their rows, and their diff."""

    a: RebuildResult
    b: RebuildResult
    rows_a: pl.DataFrame
    rows_b: pl.DataFrame
    diff: ReadModelDiff

    def describe(self) -> str:
        """One paragraph for a report."""
        d = self.diff.summary.row(0, named=True)
        return (
            f"{self.a.schema} and {self.b.schema} over commit positions "
            f"{self.a.first_position}..{self.a.last_position}: {d['rows_a']:,} and "
            f"{d['rows_b']:,} rows; {d['only_in_a']:,} key(s) only in A, {d['only_in_b']:,} only "
            f"in B, {d['changed']:,} changed, {d['unchanged']:,} the same."
        )


def compare(
    lake: Lake | str | Path,
    a: ProjectionLike,
    b: ProjectionLike,
    *,
    first_position: int | None = None,
    last_position: int | None = None,
    workers: int = 1,
    progress: bool = False,
) -> Comparison:
    """Rebuild `a` and `b` over the same pinned window and diff their read models by key.

    Example:
        >>> c = compare(lake, "pkg.projections:SummaryV1", "pkg.projections:SummaryV2")
        ... # doctest: +SKIP
        >>> c.diff.changes  # doctest: +SKIP
    """
    spec_a, spec_b = resolve_projection(a), resolve_projection(b)
    if spec_a.schema_name == spec_b.schema_name:
        raise ConfigError(
            f"both sides are {spec_a.schema_name}; compare two versions (or two projections)"
        )
    with _writable(lake) as lake_:
        first, last = pin_window(lake_, first_position, last_position)
        results = [
            rebuild(
                lake_,
                spec,
                first_position=first,
                last_position=last,
                workers=workers,
                progress=progress,
            )
            for spec in (spec_a, spec_b)
        ]
        rows_a = lake_.read_model(spec_a.name, spec_a.version).read()
        rows_b = lake_.read_model(spec_b.name, spec_b.version).read()
    key = spec_a.key
    if spec_b.key != key:
        raise ConfigError(f"the two read models have different keys: {key!r} and {spec_b.key!r}")
    return Comparison(results[0], results[1], rows_a, rows_b, diff_read_models(rows_a, rows_b, key))


def diff_read_models(a: pl.DataFrame, b: pl.DataFrame, key: str) -> ReadModelDiff:
    """Diff two read models by `key` on their shared columns.

    Example:
        >>> a = pl.DataFrame({"k": ["1", "2"], "n": [1, 2]})
        >>> b = pl.DataFrame({"k": ["2", "3"], "n": [5, 3]})
        >>> d = diff_read_models(a, b, "k")
        >>> d.keys, d.changes.select("k", "column", "a", "b", "delta").row(0)
        (['1', '2', '3'], ('2', 'n', '2', '5', '3'))
    """
    for side, frame in (("A", a), ("B", b)):
        if key not in frame.columns:
            raise ConfigError(f"read model {side} has no key column {key!r}")
    shared = [c for c in a.columns if c in b.columns and c != key]
    only_a = a.join(b.select(key), on=key, how="anti").sort(key)
    only_b = b.join(a.select(key), on=key, how="anti").sort(key)
    both = a.select(key, *shared).join(b.select(key, *shared), on=key, how="inner", suffix="_b")
    both = both.rename({c: f"{c}_a" for c in shared})
    differs = {c: pl.col(f"{c}_a").ne_missing(pl.col(f"{c}_b")) for c in shared}
    marked = both.with_columns([e.alias(f"_d_{c}") for c, e in differs.items()])
    any_diff = pl.any_horizontal([pl.col(f"_d_{c}") for c in shared]) if shared else pl.lit(False)
    changed = marked.filter(any_diff).sort(key)
    changed_columns = [c for c in shared if changed[f"_d_{c}"].any()]
    changed_rows = changed.select(
        key, *[pl.col(f"{c}_{s}") for c in changed_columns for s in ("a", "b")]
    )
    changes = _long(changed, key, changed_columns, a.schema)
    counts = {f"changed_{c}": int(changed[f"_d_{c}"].sum()) for c in changed_columns}
    summary = pl.DataFrame(
        {
            "rows_a": [a.height],
            "rows_b": [b.height],
            "only_in_a": [only_a.height],
            "only_in_b": [only_b.height],
            "changed": [changed.height],
            "unchanged": [both.height - changed.height],
            **{k: [v] for k, v in counts.items()},
        }
    )
    largest = (
        changes.filter(pl.col("size").is_not_null())
        .sort("size", key, descending=[True, False])
        .drop("size")
    )
    return ReadModelDiff(
        key=key,
        only_in_a=only_a,
        only_in_b=only_b,
        changed_rows=changed_rows,
        changes=changes.drop("size"),
        summary=summary,
        largest=largest,
    )


def _long(changed: pl.DataFrame, key: str, columns: list[str], schema: pl.Schema) -> pl.DataFrame:
    """One row per (key, changed column): a and b as text, the exact delta of numbers."""
    parts = []
    for c in columns:
        numeric = schema[c].is_numeric()
        a, b = pl.col(f"{c}_a"), pl.col(f"{c}_b")
        parts.append(
            changed.filter(pl.col(f"_d_{c}")).select(
                pl.col(key),
                pl.lit(c).alias("column"),
                a.cast(pl.String).alias("a"),
                b.cast(pl.String).alias("b"),
                # Exact in the column's own type (Decimal stays Decimal), then shown as text.
                ((b - a).cast(pl.String) if numeric else pl.lit(None, pl.String)).alias("delta"),
                # Only for ordering the largest differences.
                ((b - a).cast(pl.Float64).abs() if numeric else pl.lit(None, pl.Float64)).alias(
                    "size"
                ),
            )
        )
    schema_out = {
        key: pl.String,
        "column": pl.String,
        "a": pl.String,
        "b": pl.String,
        "delta": pl.String,
        "size": pl.Float64,
    }
    if not parts:
        return pl.DataFrame(schema=schema_out)
    return pl.concat(parts, how="vertical_relaxed").sort(key, "column")
