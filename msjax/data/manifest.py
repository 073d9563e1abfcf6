"""Any labelled corpus from a manifest: a CSV, TSV or JSONL file (chosen by extension).

Columns:
    path      the audio file, relative to the manifest's folder or absolute (required)
    emotion   its label (required)
    speaker   speaker id (protocol "loso")
    session   any grouping: session, recording day, room (protocol "group")
    split     train, val or test: the corpus' own split (protocol "split")
Other columns are ignored. Example (`list.csv`):

    path,emotion,speaker
    wav/a.wav,angry,s1
    wav/b.wav,neutral,s1
    wav/c.wav,angry,s2

Labels are the data's own, sorted, unless `labels` gives the class order; `label_map`
renames or merges classes (`exc:hap`) and drops them (`oth:`) before that. Every label, in
the rows as in `labels` and `label_map`, is read in one spelling (`canonical_label`: spaces
stripped, lower case), so "Angry" and "angry " are one class. Utterance ids
are the file stems, or the paths relative to the manifest's folder (without suffix) when
two stems collide.

Every problem of a manifest is listed at once, one line each naming its line number:
missing columns, missing or unreadable audio, duplicate paths, labels outside `labels`.
The corpus modules (RAVDESS, CREMA-D) produce the same rows, so they load through
`build_dataset` too.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from msjax.data.layout import audio_duration, check_counts
from msjax.data.records import Dataset, Utterance, sort_key
from msjax.errors import AudioError, DataError, UsageError
from msjax.io.files import atomic_write

log = logging.getLogger(__name__)

COLUMNS: tuple[str, ...] = ("path", "emotion", "speaker", "session", "split")
REQUIRED: tuple[str, ...] = ("path", "emotion")
FORMATS: tuple[str, ...] = (".csv", ".tsv", ".jsonl")
SPLITS: tuple[str, ...] = ("train", "val", "test")
# The config fields that label errors name.
_LABELS = "--config.labels"
_LABEL_MAP = "--config.label_map"

Row = dict[str, str]


def canonical_label(label: str) -> str:
    """The one spelling of a label: Unicode NFC, whitespace stripped and runs of it made one
    space, lower case, as the built-in corpora spell theirs ("Angry ", "ANGRY" -> "angry")."""
    return " ".join(unicodedata.normalize("NFC", label).split()).lower()


def parse_labels(labels: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """An ordered class list from "a,b,c" or a sequence, canonical (`canonical_label`);
    None or empty means: from the data.

    Raises:
        UsageError: a label listed twice (spellings that differ in case or spaces count as one).
    """
    if not labels:
        return None
    items = labels.split(",") if isinstance(labels, str) else list(labels)
    spelled: dict[str, str] = {}
    for item in filter(None, (item.strip() for item in items)):
        label = canonical_label(item)
        if label in spelled:
            raise UsageError(
                f"{_LABELS}: {spelled[label]!r} and {item!r} are the same label {label!r} "
                "(labels ignore case and spaces)"
            )
        spelled[label] = item
    return tuple(spelled)


def parse_label_map(label_map: str | Mapping[str, str] | None) -> dict[str, str]:
    """{raw: label}, both canonical, from "exc:hap,oth:" or a mapping; an empty target
    drops the class. Applied once to each row's label, before `labels`.

    Raises:
        UsageError: one line naming --config.label_map: an entry without exactly one colon,
            an empty raw label, a raw label mapped twice (spellings that differ in case or
            spaces count as one), or a target that is mapped on again (a chain).
    """
    if not label_map:
        return {}
    if isinstance(label_map, str):
        pairs = [_map_entry(e) for e in (e.strip() for e in label_map.split(",")) if e]
    else:
        pairs = [(str(k), str(v or "")) for k, v in label_map.items()]
    mapping: dict[str, str] = {}
    spelled: dict[str, str] = {}
    for raw, label in pairs:
        key, entry = canonical_label(raw), f"{raw}:{label}"
        if not key:
            raise UsageError(f"{_LABEL_MAP} entry {entry!r}: the label before ':' is empty")
        if key in mapping:
            raise UsageError(
                f"{_LABEL_MAP}: {key!r} is mapped twice ({spelled[key]!r} and {entry!r})"
            )
        mapping[key], spelled[key] = canonical_label(label), entry
    for key, label in mapping.items():
        if label and label != key and mapping.get(label, label) != label:
            raise UsageError(
                f"{_LABEL_MAP}: {spelled[key]!r} maps to {label!r}, which {spelled[label]!r} "
                f"maps again (each label is mapped once); map {key!r} to the final label"
            )
    return mapping


def _map_entry(entry: str) -> tuple[str, str]:
    """(raw, label) of one "raw:label" entry of a --config.label_map string."""
    if entry.count(":") != 1:
        problem = "no ':'" if ":" not in entry else "more than one ':'"
        raise UsageError(
            f"{_LABEL_MAP} entry {entry!r}: {problem}; expected raw:label (or raw: to drop)"
        )
    raw, label = entry.split(":")
    return raw, label


def read_rows(path: Path) -> list[tuple[int, Row]]:
    """The rows of a manifest with their line numbers, values as stripped strings.

    Raises:
        DataError: not a file, an unknown extension, unparseable content, or a required
            column missing.
    """
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise DataError(f"{path}: a manifest must end in {', '.join(FORMATS)}")
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            if path.suffix.lower() == ".jsonl":
                rows, columns = _jsonl_rows(path, f)
            else:
                reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
                columns = [c.strip() for c in reader.fieldnames or []]
                rows = [
                    (reader.line_num, {c.strip(): (v or "").strip() for c, v in row.items() if c})
                    for row in reader
                ]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: cannot read the manifest ({err})") from None
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        have = ", ".join(columns) or "none"
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (columns: {have})")
    return rows


def _jsonl_rows(path: Path, lines: Iterable[str]) -> tuple[list[tuple[int, Row]], list[str]]:
    rows, columns = [], set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as err:  # RecursionError: nested too deep
            raise DataError(f"{path}:{number}: not a JSON object ({err})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{number}: not a JSON object")
        rows.append(
            (number, {str(k): "" if v is None else str(v).strip() for k, v in record.items()})
        )
        columns.update(record)
    # A column counts as present when any row has it: JSONL has no header.
    return rows, [c for c in COLUMNS if c in columns]


def build_dataset(
    name: str,
    rows: Sequence[tuple[int | None, Row]],
    base: Path,
    source: str,
    labels: str | Sequence[str] | None = None,
    label_map: str | Mapping[str, str] | None = None,
) -> Dataset:
    """Turns manifest rows into a Dataset, checking every row first.

    Args:
        name: The dataset's name.
        rows: (line number, row) pairs as `read_rows` returns them; a corpus module's rows
            carry None (its messages name the file alone).
        base: Folder that relative paths start from.
        source: Names the rows' origin in messages (the manifest file or corpus root).
        labels: The class order ("a,b,c" or a sequence); None: the data's labels, sorted.
        label_map: Renames or drops raw labels before `labels` applies (`parse_label_map`).

    Every label is read in its canonical spelling (`canonical_label`); the spellings that
    changed are logged (a warning where two spellings became one class), and so are the
    label map's raw labels that no row has.

    Raises:
        UsageError: bad `labels` or `label_map`, or a map target outside `labels`.
        DataError: one line per bad row (missing/unreadable audio, duplicate path, empty
            or unknown label, bad split), all listed; or no rows left.
    """
    order = parse_labels(labels)
    mapping = parse_label_map(label_map)
    _check_map_targets(mapping, order)
    problems: list[str] = []
    kept: list[tuple[Path, Row, str, str]] = []
    seen: dict[Path, int] = {}
    spellings: Counter[tuple[str, str]] = Counter()
    for number, row in rows:
        where = source if number is None else f"{source}:{number}"
        raw, rel = canonical_label(row.get("emotion", "")), row.get("path", "")
        spellings[row.get("emotion", ""), raw] += 1
        label = mapping.get(raw, raw)
        if raw in mapping and not label:
            continue  # dropped by the label map
        if not rel:
            problems.append(f"{where}: empty path")
            continue
        path = Path(rel) if Path(rel).is_absolute() else Path(base) / rel
        if not label:
            problems.append(f"{where}: {rel}: empty emotion")
        elif order is not None and label not in order:
            problems.append(f"{where}: {rel}: label {label!r} is not one of {', '.join(order)}")
        split = row.get("split", "").lower()
        if split and split not in SPLITS:
            problems.append(f"{where}: {rel}: split {split!r} is not one of {', '.join(SPLITS)}")
        resolved = Path(os.path.normpath(path.absolute()))
        if resolved in seen:
            problems.append(f"{where}: {rel}: duplicate path (also on line {seen[resolved]})")
            continue
        seen[resolved] = number
        if not path.is_file():
            problems.append(f"{where}: {rel}: no such file")
            continue
        kept.append((path, dict(row, split=split), label, where))
    utterances, uids = [], _uids([p for p, *_ in kept], Path(base))
    for (path, row, label, where), uid in zip(kept, uids):
        try:
            duration = audio_duration(path)
        except AudioError as err:
            problems.append(f"{where}: {err}")
            continue
        utterances.append(
            Utterance(
                uid,
                path,
                row.get("speaker", ""),
                label,
                duration,
                session=row.get("session") or None,
                split=row["split"] or None,
            )
        )
    _report_spellings(source, spellings, mapping)
    if problems:
        raise DataError(f"{source}: {len(problems)} problem(s)\n" + "\n".join(problems))
    if not utterances:
        raise DataError(f"{source}: no utterances (after the label map)")
    found = {u.label for u in utterances}
    return Dataset(name, order or tuple(sorted(found)), tuple(sorted(utterances, key=sort_key)))


def _check_map_targets(mapping: Mapping[str, str], order: Sequence[str] | None) -> None:
    """Refuses a label map target that `labels` does not list (a usage error, once,
    rather than one data error per row it maps)."""
    if order is None:
        return
    outside = sorted({t for t in mapping.values() if t} - set(order))
    if outside:
        raise UsageError(
            f"{_LABEL_MAP}: maps to {', '.join(map(repr, outside))}, not one of "
            f"{_LABELS}={','.join(order)}"
        )


def _report_spellings(
    source: str, spellings: Mapping[tuple[str, str], int], mapping: Mapping[str, str]
) -> None:
    """Logs the labels whose spelling was made canonical (a warning when spellings merged)
    and the label map's raw labels that no row has.

    Args:
        spellings: (label as written, canonical label) -> rows.
    """
    found = {c for _, c in spellings}
    changed = {k: n for k, n in spellings.items() if k[0] != k[1]}
    if changed:
        merged = len(found) < len({w for w, _ in spellings})
        shown = [
            f"{w!r} -> {c!r} ({n} row{'s' * (n > 1)})"
            for (w, c), n in sorted(changed.items(), key=lambda item: item[0][::-1])
        ]
        more = f" and {len(shown) - 8} more" if len(shown) > 8 else ""
        log.log(
            logging.WARNING if merged else logging.INFO,
            "%s: labels ignore case and spaces: %s%s", source, ", ".join(shown[:8]), more,
        )
    absent = [raw for raw in mapping if raw not in found]
    if absent:
        log.warning(
            "%s: %s: no row is labelled %s (the data's labels: %s)", source, _LABEL_MAP,
            ", ".join(map(repr, absent)), ", ".join(sorted(found)),
        )


def load_corpus(
    name: str,
    root: Path,
    rows: Sequence[tuple[int | None, Row]],
    labels: Sequence[str],
    counts: tuple[int, Mapping[str, int], int],
    *,
    allow_count_mismatch: bool = False,
) -> Dataset:
    """A corpus module's rows as a Dataset, checked against its published counts.

    Args:
        name, labels: The corpus' name and fixed class order.
        root: The corpus directory; row paths are relative to it.
        rows: From the corpus module.
        counts: Published (utterances, utterances per class, speakers).
        allow_count_mismatch: Only warn when the counts differ.

    Raises:
        DataError: unreadable audio (every file listed), or the counts differ and
            `allow_count_mismatch` is False.
    """
    root = Path(root)
    dataset = build_dataset(name, rows, root, str(root), labels)
    check_counts(dataset, root, *counts, allow_count_mismatch=allow_count_mismatch)
    return dataset


def _uids(paths: Sequence[Path], base: Path) -> list[str]:
    """File stems; paths relative to `base` without suffix when two stems collide."""
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    uids = []
    for p in paths:
        try:
            uids.append(p.relative_to(base).with_suffix("").as_posix())
        except ValueError:
            uids.append(p.with_suffix("").as_posix())
    return uids


def load(
    path: Path,
    *,
    labels: str | Sequence[str] | None = None,
    label_map: str | Mapping[str, str] | None = None,
    allow_count_mismatch: bool = False,
) -> Dataset:
    """Loads the corpus a manifest file lists (see the module docstring).

    `allow_count_mismatch` is accepted for a uniform loader signature; a manifest has no
    published counts to check.

    Raises:
        DataError: the manifest or its rows (every problem listed, one per line).
    """
    del allow_count_mismatch
    path = Path(path)
    return build_dataset("manifest", read_rows(path), path.parent, str(path), labels, label_map)


def dataset_rows(dataset: Dataset, base: Path) -> list[Row]:
    """A dataset as manifest rows, paths relative to `base` where they lie below it."""
    rows = []
    for utt in dataset.utterances:
        path = Path(os.path.normpath(utt.path.absolute()))
        try:
            path = path.relative_to(Path(os.path.normpath(Path(base).absolute())))
        except ValueError:
            pass
        rows.append(
            {
                "path": path.as_posix(),
                "emotion": utt.label,
                "speaker": utt.speaker,
                "session": utt.session or "",
                "split": utt.split or "",
            }
        )
    return rows


def write(rows: Sequence[Row], path: Path) -> None:
    """Writes rows as a manifest (format by extension), atomically; empty columns are left out.

    Raises:
        DataError: an unknown extension.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"{path}: a manifest must end in {', '.join(FORMATS)}")
    columns = [c for c in COLUMNS if c in REQUIRED or any(r.get(c) for r in rows)]
    text = io.StringIO(newline="")
    if suffix == ".jsonl":
        for row in rows:
            text.write(json.dumps({c: row.get(c, "") for c in columns}) + "\n")
    else:
        writer = csv.DictWriter(
            text,
            columns,
            delimiter="\t" if suffix == ".tsv" else ",",
            extrasaction="ignore",
            lineterminator="\n",
        )
        writer.writeheader()
        writer.writerows(rows)
    atomic_write(path, lambda f: f.write(text.getvalue().encode("utf-8")), "the manifest")
