"""Per-job skip reports: galaxies a job could not use, with the reason, never dropped silently."""

import csv
import io
import logging

from inclinet.io import atomic_write_text

logger = logging.getLogger(__name__)


class SkipReport:
    """Collects (pgc, file, reason) rows and writes them as CSV.

    The report file is always written, with its header, even when nothing was skipped, so
    that a workflow can declare it as an output.
    """

    columns = ("pgc", "band", "file", "reason")

    def __init__(self, stage):
        self.stage = stage
        self.rows = []

    def skip(self, pgc, reason, *, band="", file=""):
        self.rows.append({"pgc": pgc, "band": band, "file": str(file), "reason": reason})
        logger.warning("%s: skipped pgc %s%s: %s", self.stage, pgc, f" ({file})" if file else "", reason)

    def __len__(self):
        return len(self.rows)

    def to_csv(self):
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        return buffer.getvalue()

    def write(self, path):
        atomic_write_text(path, self.to_csv())
