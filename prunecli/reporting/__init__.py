"""``prunecli report``: one Markdown report (table + figures) of many training runs.

``runs`` finds run folders and reads each into a table row, ``history`` turns a run's
``metrics.jsonl`` into curves on one step axis, ``figures`` draws them with matplotlib,
``markdown`` formats the table (Markdown and Rich) and ``build`` ties them together.
Nothing here imports torch: a report of a sweep takes seconds, not a model load.
"""

from prunecli.reporting.build import Report, build_report

__all__ = ["Report", "build_report"]
