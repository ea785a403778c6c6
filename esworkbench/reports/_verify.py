"""Verifying a report: re-read what it read and say whether its data and files are unchanged.

(private; ``esworkbench.reports`` re-exports ``verify_manifest`` and ``VerifyResult``.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from esworkbench.errors import ReportError
from esworkbench.reports._record import ReadRecord, reads_in_notebook

__all__ = ["ReadCheck", "VerifyResult", "verify_manifest"]


@dataclasses.dataclass(frozen=True)
class ReadCheck:
    """One recorded read, re-done against the lake."""

    filters: dict[str, Any]
    expected_digest: str
    actual_digest: str
    expected_count: int
    actual_count: int
    history_unchanged: bool | None

    @property
    def matches(self) -> bool:
        """True when the lake still answers the read with the same events."""
        return self.expected_digest == self.actual_digest


@dataclasses.dataclass(frozen=True)
class VerifyResult:
    """Whether a report still matches its data and its files.

    Attributes:
        matches: every recorded read yields the same digest from the lake today.
        files_intact: the executed notebook and the HTML hash as when written.
        checks: one per recorded read.
        problems: human-readable reasons, empty when all is well.
    """

    manifest_path: Path
    lake: Path
    matches: bool
    files_intact: bool
    checks: tuple[ReadCheck, ...]
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """Data and files both as recorded."""
        return self.matches and self.files_intact

    def __str__(self) -> str:
        if self.ok:
            reads = sum(c.expected_count for c in self.checks)
            return f"OK: {self.manifest_path} matches {self.lake} ({reads:,} events re-read)"
        return "MISMATCH: " + "; ".join(self.problems)


def verify_manifest(path: str | Path, *, lake: str | Path | None = None) -> VerifyResult:
    """Re-read what a report read and say whether its data (and files) are unchanged.

    Args:
        path: a report's ``manifest.json`` (or its directory); or a notebook executed by plain
            papermill, whose read records are checked the same way (it has no file hashes).
        lake: the lake to check against (default: the lake path recorded).

    Example:
        >>> print(verify_manifest("reports/balance_timeline/20250101T000000Z/manifest.json"))
        ... # doctest: +SKIP
        OK: ... matches ... (1,234 events re-read)
    """
    from esworkbench.lake import Lake

    manifest_path = Path(path)
    if manifest_path.is_dir():
        manifest_path = manifest_path / "manifest.json"
    try:
        document = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as e:
        raise ReportError(f"cannot read report manifest {manifest_path}: {e}") from e
    if manifest_path.suffix == ".ipynb":
        reads = reads_in_notebook(document)
        manifest: dict[str, Any] = {"lake": {"path": reads[0].lake if reads else ""}}
    else:
        manifest = document
        reads = [ReadRecord.from_json(r) for r in manifest.get("reads", [])]
    lake_path = Path(lake) if lake is not None else Path(manifest["lake"]["path"])
    if not lake_path.is_file():
        raise ReportError(
            f"the lake {lake_path} of {manifest_path} does not exist; pass "
            "lake= (or --lake) to check against a copy"
        )
    problems: list[str] = []
    if not reads:
        problems.append("the manifest records no reads, so there is nothing to verify")
    checks = []
    with Lake(lake_path, read_only=True) as opened:
        for record in reads:
            filters = record.lake_filters()
            actual = opened.digest(**filters)
            count = record.event_count
            pinned = None
            if actual != record.digest and record.last_position is not None:
                # Same filters up to the last position read: tells new events from changed ones.
                pinned_filters = {
                    **filters,
                    "to_position": min(
                        record.last_position, filters.get("to_position", record.last_position)
                    ),
                }
                pinned = opened.digest(**pinned_filters) == record.digest
                count = opened.read_events(**filters).height
            checks.append(
                ReadCheck(record.filters, record.digest, actual, record.event_count, count, pinned)
            )
    for check in checks:
        if check.matches:
            continue
        what = (
            "events were added in scope; the events read are unchanged"
            if check.history_unchanged
            else "events the report read were changed or removed"
        )
        problems.append(
            f"read {json.dumps(check.filters)}: digest {check.actual_digest} != "
            f"recorded {check.expected_digest} ({check.actual_count:,} events now, "
            f"{check.expected_count:,} then; {what})"
        )
    files_intact = True
    for name, digest in manifest.get("files", {}).items():
        file = manifest_path.parent / name
        if not file.exists() or _sha256(file) != digest:
            files_intact = False
            problems.append(f"{name} is missing or was modified since the report was written")
    matches = bool(reads) and all(c.matches for c in checks)
    return VerifyResult(
        manifest_path, lake_path, matches, files_intact, tuple(checks), tuple(problems)
    )


def _sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
