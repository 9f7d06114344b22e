"""Prompt sets: the user's own prompts from files, and the built-in task sets, as one type.

:func:`load_prompt_file` reads

- JSON Lines (``.jsonl``, ``.ndjson``; one object a line, read by :mod:`engines.jsonl`'s rule),
- CSV (``.csv``, a header row; cells are kept as text, so ``007`` stays ``007``),
- Parquet (``.parquet``, ``.pq``),
- a Hugging Face ``datasets`` folder written by ``save_to_disk`` (``load_from_disk``;
  a ``DatasetDict`` needs ``split``),
- a ``datasets`` cache: a cached ``.arrow`` file, or a cache folder holding
  ``NAME-SPLIT.arrow`` shards (what ``load_dataset`` leaves under its cache dir),

with a column mapping (``prompt_col``, ``answer_col``, ``system_col``; ``reward_col``
lets each row name its own steering reward, as the built-in ``open`` set does).
Everything is validated before a :class:`PromptSet` is returned: a missing column, an
empty prompt, a malformed file each raise one :class:`PromptSetError` line that names the
row, so nothing half-read is ever stored. :func:`builtin_prompt_set` wraps a built-in
task set (``open``, ``arith*``, ``digits``) in the same type, through the same checks.

:meth:`PromptSet.content_hash` is the SHA-256 of the canonical JSON of the tasks: the
store keeps one copy per hash.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.errors import ConfigError
from engines.jsonl import JsonLinesError, read_json_lines
from engines.task import Task

MAX_PROMPTS = 100_000
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


class PromptSetError(ConfigError):
    """A prompt file that cannot be used: one line naming the file and the row."""


@dataclass(frozen=True)
class Columns:
    prompt: str = "prompt"
    answer: str | None = None
    system: str | None = None
    reward: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {"prompt": self.prompt, "answer": self.answer, "system": self.system, "reward": self.reward}


@dataclass(frozen=True)
class PromptSet:
    name: str
    tasks: tuple[Task, ...]
    source: str = ""
    #: the model and steering reward the set is meant for (built-ins name them; files may not)
    model: str | None = None
    reward: str | None = None
    columns: dict[str, Any] = field(default_factory=dict)

    @property
    def modality(self) -> str:
        return self.tasks[0].meta.get("modality", "text") if self.tasks else "text"

    def content_hash(self) -> str:
        return hashlib.sha256(canonical_json([task_record(t) for t in self.tasks]).encode("utf-8")).hexdigest()

    def __len__(self) -> int:
        return len(self.tasks)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def task_record(task: Task) -> dict[str, Any]:
    return {"prompt": task.prompt, "answer": task.answer, "system": task.system, "chat": task.chat,
            "meta": dict(task.meta)}


def check_set_name(name: Any) -> str:
    if not isinstance(name, str) or not name or len(name) > 100 or not set(name) <= NAME_CHARS:
        raise PromptSetError(f"a prompt set name is 1-100 letters, digits, '-', '_' or '.', got {name!r}")
    return name


# -- reading files ----------------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        return read_json_lines(path)
    except JsonLinesError as exc:
        raise PromptSetError(f"{path.name} {exc}") from None


def _read_csv(path: Path) -> list[dict[str, Any]]:
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle, strict=True)
            rows = []
            for row in reader:
                if None in row:  # more cells than the header names
                    raise PromptSetError(f"{path.name} row {reader.line_num - 1}: more cells than the header has columns")
                if any(v is None for v in row.values()):
                    raise PromptSetError(f"{path.name} row {reader.line_num - 1}: fewer cells than the header has columns")
                rows.append(row)
            if reader.fieldnames is None:
                raise PromptSetError(f"{path.name}: the file is empty (a CSV needs a header row)")
            return rows
    except csv.Error as exc:
        raise PromptSetError(f"{path.name}: malformed CSV ({exc})") from None
    except UnicodeDecodeError as exc:
        raise PromptSetError(f"{path.name}: not UTF-8 text ({exc.reason})") from None


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise PromptSetError(f"{path.name}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None


def _dataset_rows(dataset: Any, where: str, split: str | None) -> list[dict[str, Any]]:
    from datasets import DatasetDict

    if isinstance(dataset, DatasetDict):
        splits = sorted(dataset)
        if split is None and len(splits) == 1:
            split = splits[0]
        if split not in dataset:
            raise PromptSetError(f"{where}: choose a split with --split ({', '.join(splits)})")
        dataset = dataset[split]
    return dataset.to_list()


def _read_arrow(paths: list[Path], where: str) -> list[dict[str, Any]]:
    from datasets import Dataset, concatenate_datasets

    try:
        parts = [Dataset.from_file(str(p)) for p in paths]
    except Exception as exc:  # pyarrow raises several kinds for a bad file
        raise PromptSetError(f"{where}: not a readable datasets cache file ({str(exc).splitlines()[0]})") from None
    return concatenate_datasets(parts).to_list() if len(parts) > 1 else parts[0].to_list()


def _read_folder(path: Path, split: str | None) -> list[dict[str, Any]]:
    if (path / "state.json").exists() or (path / "dataset_dict.json").exists():
        from datasets import load_from_disk

        try:
            dataset = load_from_disk(str(path))
        except Exception as exc:
            raise PromptSetError(f"{path.name}: not a readable datasets folder ({str(exc).splitlines()[0]})") from None
        return _dataset_rows(dataset, path.name, split)
    shards = sorted(path.glob("*.arrow"))
    if not shards:
        raise PromptSetError(f"{path.name}: a folder must be a datasets save_to_disk folder or a datasets cache "
                             "folder with .arrow files")
    by_split: dict[str, list[Path]] = {}
    for shard in shards:  # cache shards are NAME-SPLIT.arrow or NAME-SPLIT-00000-of-00002.arrow
        parts = shard.stem.split("-")
        name = parts[1] if len(parts) >= 2 else "train"
        by_split.setdefault(name, []).append(shard)
    if split is None and len(by_split) == 1:
        split = next(iter(by_split))
    if split not in by_split:
        raise PromptSetError(f"{path.name}: choose a split with --split ({', '.join(sorted(by_split))})")
    return _read_arrow(by_split[split], path.name)


def read_rows(path: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    """The rows of a prompt file or datasets folder, as dicts (no checks of the columns yet)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise PromptSetError(f"{path}: no such file or folder")
    if path.is_dir():
        return _read_folder(path, split)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(path)
    if suffix == ".csv":
        return _read_csv(path)
    if suffix in (".parquet", ".pq"):
        return _read_parquet(path)
    if suffix == ".arrow":
        return _read_arrow([path], path.name)
    raise PromptSetError(f"{path.name}: unknown format {suffix or '(no extension)'}; use .jsonl, .csv, .parquet, "
                         ".arrow or a datasets folder")


# -- checking rows ------------------------------------------------------------------------------------------


def _optional_text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # 42.0 read back from a float column is the answer 42
    text = str(value).strip() if isinstance(value, int | float | str) else None
    return text or None


def tasks_from_rows(rows: Iterable[dict[str, Any]], columns: Columns, where: str, *, chat: bool = True,
                    name: str = "set") -> list[Task]:
    """Check every row and turn it into a Task; the first bad row raises one line naming it."""
    rows = list(rows)
    if not rows:
        raise PromptSetError(f"{where}: no rows")
    if len(rows) > MAX_PROMPTS:
        raise PromptSetError(f"{where}: {len(rows)} rows; a prompt set holds at most {MAX_PROMPTS}")
    wanted = [c for c in (columns.prompt, columns.answer, columns.system, columns.reward) if c]
    present = set(rows[0])
    for column in wanted:
        if column not in present:
            raise PromptSetError(f"{where}: no column {column!r} (columns: {', '.join(sorted(map(str, present)))})")
    tasks = []
    for number, row in enumerate(rows, 1):
        missing = [c for c in wanted if c not in row]
        if missing:
            raise PromptSetError(f"{where} row {number}: no {missing[0]!r} field")
        prompt = row[columns.prompt]
        if not isinstance(prompt, str):
            raise PromptSetError(f"{where} row {number}: the prompt in {columns.prompt!r} is not text "
                                 f"({type(prompt).__name__})")
        if not prompt.strip():
            raise PromptSetError(f"{where} row {number}: empty prompt in column {columns.prompt!r}")
        meta: dict[str, Any] = {}
        if columns.reward:
            reward = _optional_text(row[columns.reward])
            if reward:
                meta["reward"] = reward
        tasks.append(Task(
            prompt=prompt,
            answer=_optional_text(row[columns.answer]) if columns.answer else None,
            system=_optional_text(row[columns.system]) if columns.system else None,
            chat=chat,
            name=f"{name}:{number - 1}",
            meta=meta,
        ))
    return tasks


def load_prompt_file(path: str | Path, *, name: str | None = None, prompt_col: str = "prompt",
                     answer_col: str | None = None, system_col: str | None = None, reward_col: str | None = None,
                     split: str | None = None, chat: bool = True) -> PromptSet:
    """A validated prompt set from a file or datasets folder (PromptSetError on any bad row)."""
    path = Path(path).expanduser()
    set_name = check_set_name(name or path.stem.split(".")[0] or "prompts")
    columns = Columns(prompt=prompt_col, answer=answer_col or None, system=system_col or None, reward=reward_col or None)
    tasks = tasks_from_rows(read_rows(path, split), columns, path.name, chat=chat, name=set_name)
    return PromptSet(name=set_name, tasks=tuple(tasks), source=str(path), columns=columns.as_dict())


def builtin_prompt_set(name: str) -> PromptSet:
    """A built-in task set as a PromptSet, through the same row checks as a file."""
    from engines.tasks import TASK_SETS

    task_set = TASK_SETS.get(name)
    tasks = task_set.tasks()
    image = any(t.meta.get("modality") == "image" for t in tasks)
    for number, task in enumerate(tasks, 1):  # the same rule as files: text prompts must say something
        if not image and not task.prompt.strip():
            raise PromptSetError(f"built-in set {name} row {number}: empty prompt")
    return PromptSet(name=name, tasks=tuple(tasks), source=f"builtin:{name}", model=task_set.model,
                     reward=task_set.reward, columns={})


def builtin_names() -> list[str]:
    from engines.tasks import TASK_SETS

    return TASK_SETS.names()
