"""Candidates for `build --off-topic` from the edge's feedback (`python -m model_build data off-topic`): the
escalated requests the cloud answered with the out-of-scope label, one row per distinct text, written as a CSV
for a person to review before any of it is trained on.

Why a review and not the records as they are: the cloud refuses some in-scope requests too (the demo replay's
"Refused" table counts them: about a quarter of the cloud's refusals, `bench/results/demo/demo.md`); trained on
as off-topic, they would teach both tiers to refuse those intents. The CSV's `text` column is what `--off-topic`
reads (`model_build.data.unlabeled.load_unlabeled`), so the reviewed file goes straight back in.

The texts are your users' requests, and the file is opened in a spreadsheet: a cell starting with `=`, `+`,
`-`, `@`, a tab or a carriage return would be read as a formula (CSV injection). Such cells are written with a
leading `'` (OWASP's advice), and `load_unlabeled` takes it off again when it reads a review CSV, so
`--off-topic` trains on the text as it was asked.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_build.errors import DataError

REVIEW_COLUMNS = ("text", "times", "edge_label", "edge_top", "cloud_top")
TOP_SHOWN = 3  # the edge's best guesses shown to the reviewer
# What a spreadsheet reads as the start of a formula (OWASP, "CSV Injection")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(cell: str) -> str:
    """`cell` as a spreadsheet shows it as text: a leading `'` before a formula's first character."""
    return "'" + cell if cell.startswith(FORMULA_START) else cell


def from_spreadsheet(cell: str) -> str:
    """The cell `spreadsheet_safe` wrote, as it was (other cells unchanged)."""
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(FORMULA_START) else cell


def is_review(columns: Iterable[str]) -> bool:
    """Whether a CSV with these columns is a review CSV (its cells then went through `spreadsheet_safe`)."""
    return {"text", "times", "edge_label"} <= set(columns)  # a reviewer may drop the columns of guesses


@dataclass(frozen=True)
class Candidate:
    """One distinct refused text: how often the cloud refused it, and the intent the edge most often guessed
    (what the text would be mistaken for). No cloud confidence: for a refusal by its threshold the cloud
    reports its best intent's (low) probability, for an `oos` argmax that label's; the two do not rank."""

    text: str
    times: int
    edge_label: str
    edge_top: str = ""  # the edge's best guesses with their probabilities, as first recorded ("a 0.41; b 0.2")
    cloud_top: str = ""  # the cloud's, as it replied (records of an older edge have none)


@dataclass(frozen=True)
class Refused:
    candidates: tuple[Candidate, ...]  # most often refused first, then in the order first seen
    records: int  # records read
    refused: int  # of them, answered with the label by the cloud (text or not)
    textless: int  # of those, records without a text (a hash-mode store's): nothing to review

    def summary(self, out: Path, label: str) -> str:
        lines = [f"{self.records} feedback records: the cloud answered {label!r} to {self.refused}, "
                 f"{len(self.candidates)} distinct texts -> {out}"]
        if self.textless:
            lines.append(f"{self.textless} of them carry no text (a hash-mode store): left out")
        lines.append("review it: delete every row one of your intents should answer (the cloud refuses some "
                     "in-scope requests too), then build with --off-topic " + str(out))
        return "\n".join(lines)


def refused_texts(records: Iterable[Mapping[str, Any]], *, label: str) -> Refused:
    """The records whose cloud answer is `label`, grouped by text (stripped; empty texts dropped)."""
    times: Counter[str] = Counter()  # insertion-ordered: first seen first
    guesses: dict[str, Counter[str]] = {}
    tops: dict[str, tuple[str, str]] = {}
    n = refused = textless = 0
    for record in records:
        n += 1
        if record.get("cloud_label") != label:
            continue
        refused += 1
        text = record.get("text")
        if not isinstance(text, str) or not text.strip():
            textless += 1
            continue
        text = text.strip()
        times[text] += 1
        guesses.setdefault(text, Counter())[str(record.get("edge_label", ""))] += 1
        edge_scores = record.get("edge_scores")
        tops.setdefault(text, (_top(edge_scores.get("top") if isinstance(edge_scores, Mapping) else None),
                               _top(record.get("cloud_top"))))
    candidates = [Candidate(t, c, guesses[t].most_common(1)[0][0], *tops[t]) for t, c in times.items()]
    candidates.sort(key=lambda c: -c.times)  # stable: ties keep the order first seen
    return Refused(tuple(candidates), n, refused, textless)


def _top(top: object) -> str:
    """"label p; label p" from recorded best answers ([[label, p], ...]), or ""."""
    if not isinstance(top, list):
        return ""
    pairs = [pair for pair in top[:TOP_SHOWN] if isinstance(pair, list | tuple) and len(pair) == 2]
    return "; ".join(f"{label} {float(p):.2f}" for label, p in pairs if isinstance(p, int | float))


def write_review(candidates: Iterable[Candidate], path: Path) -> None:
    """The review CSV (UTF-8, RFC 4180 quoting: texts with commas, quotes or line breaks survive; cells a
    spreadsheet would run as formulas written as text, `spreadsheet_safe`)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(REVIEW_COLUMNS)
            for c in candidates:
                writer.writerow((spreadsheet_safe(c.text), c.times, spreadsheet_safe(c.edge_label),
                                 spreadsheet_safe(c.edge_top), spreadsheet_safe(c.cloud_top)))
    except OSError as exc:
        raise DataError(f"{path}: cannot write it ({exc.strerror or exc})") from None
