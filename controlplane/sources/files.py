"""Directory source: every *.yaml / *.yml file under a directory, polled for changes.

`FileSet` (pure) takes the files that changed (path -> text, None when deleted) and passes only
their documents to the shared `Ledger`, which keeps the last accepted version of a resource whose
document became invalid, so a typo never takes routing down; a file that no longer parses keeps
all its resources. A key defined in two files is taken from the first path. `DirectorySource` is
the I/O edge: it polls file fingerprints and reads only the files whose fingerprint changed; the
change's source time is the file's modification time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

import yaml

from controlplane.model import Resource, ResourceKey
from controlplane.sources.ledger import Committed, Ledger
from controlplane.store import Store
from controlplane.validate import Parsed, Problem, parse_document

log = logging.getLogger("controlplane.sources.files")

SOURCE = "files"


class FileSet:
    """Accepted resources of a set of files, updated file by file."""

    def __init__(self, *, default_namespace: str = "default") -> None:
        self._namespace = default_namespace
        self._ledger = Ledger()
        self._docs: dict[str, dict[ResourceKey, Parsed]] = {}
        self._file_problems: dict[str, tuple[Problem, ...]] = {}
        self._claims: dict[ResourceKey, set[str]] = {}

    def update(self, files: Mapping[str, str | None]) -> Committed:
        """Take the new text of changed files (None: deleted); return what is served now."""
        affected: set[ResourceKey] = set()
        for path in sorted(files):
            text = files[path]
            old = self._docs.get(path, {})
            if text is None:
                new: dict[ResourceKey, Parsed] = {}
                self._file_problems.pop(path, None)
            else:
                parsed_file = self._parse(path, text)
                if parsed_file is None:
                    continue  # unparsable: its last good documents stay
                new = parsed_file
            for key in old.keys() - new.keys():
                claims = self._claims.get(key, set())
                claims.discard(path)
                if not claims:
                    self._claims.pop(key, None)
            for key in new:
                self._claims.setdefault(key, set()).add(path)
            affected |= old.keys() | new.keys()
            if new:
                self._docs[path] = new
            else:
                self._docs.pop(path, None)
        for key in affected:
            owners = self._claims.get(key)
            if not owners:
                self._ledger.submit(key, None, origin="")
                continue
            owner = min(owners)
            self._ledger.submit(key, self._docs[owner][key], origin=owner)
        return self._ledger.commit()

    def _parse(self, path: str, text: str) -> dict[ResourceKey, Parsed] | None:
        try:
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as error:
            kept = len([k for k in self._docs.get(path, {}) if k in self._ledger.served()])
            self._file_problems[path] = (
                Problem(
                    origin=path,
                    resource="",
                    path="",
                    message=f"YAML syntax error, file ignored ({kept} resources from its last "
                    f"good version keep serving): {_one_line(error)}",
                ),
            )
            return None
        found: dict[ResourceKey, Parsed] = {}
        problems: list[Problem] = []
        for doc in docs:
            parsed = parse_document(doc, origin=path, default_namespace=self._namespace)
            if parsed.key is None:
                problems += parsed.problems
            elif parsed.key in found:
                problems.append(_duplicate(path, parsed.key, path))
            else:
                found[parsed.key] = parsed
        self._file_problems[path] = tuple(problems)
        return found

    def served(self) -> dict[ResourceKey, Resource]:
        """Every accepted resource."""
        return self._ledger.served()

    def problems(self) -> tuple[Problem, ...]:
        """Problems of every file: documents, references, duplicates, syntax."""
        duplicates = [
            _duplicate(path, key, min(paths))
            for key, paths in sorted(self._claims.items())
            if len(paths) > 1
            for path in sorted(paths)[1:]
        ]
        by_file = [p for path in sorted(self._file_problems) for p in self._file_problems[path]]
        return (*by_file, *duplicates, *self._ledger.problems())

    def load(
        self, files: Mapping[str, str]
    ) -> tuple[dict[ResourceKey, Resource], tuple[Problem, ...]]:
        """Make the set exactly `files` (path -> text); return accepted resources and problems."""
        gone: dict[str, str | None] = {p: None for p in self._docs if p not in files}
        self.update({**gone, **files})
        return self.served(), self.problems()


def _duplicate(path: str, key: ResourceKey, owner: str) -> Problem:
    return Problem(
        origin=path,
        resource=str(key),
        path="metadata.name",
        message=f"also defined in {owner}; this copy is ignored",
    )


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def read_directory(root: Path) -> dict[str, str]:
    """Read every YAML file under `root` (path -> text)."""
    files = {}
    for path in sorted([*root.rglob("*.yaml"), *root.rglob("*.yml")]):
        try:
            files[str(path)] = path.read_text()
        except OSError as error:  # deleted between listing and reading
            log.debug("skip %s: %s", path, error)
    return files


Fingerprint = dict[str, tuple[int, int]]  # path -> (mtime ns, size)


def fingerprint(root: Path) -> Fingerprint:
    """Modification time and size of every YAML file under `root`."""
    found: Fingerprint = {}
    stack = [str(root)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=True):
                    stack.append(entry.path)
                elif entry.name.endswith((".yaml", ".yml")):
                    stat = entry.stat()
                    found[entry.path] = (stat.st_mtime_ns, stat.st_size)
            except OSError:
                continue
    return found


def _read_changed(paths: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for path in paths:
        try:
            out[path] = Path(path).read_text()
        except OSError:
            out[path] = None
    return out


class DirectorySource:
    """Keeps the store's `files` slice equal to the (valid) contents of a directory."""

    def __init__(self, root: Path, store: Store, *, interval: float = 0.1) -> None:
        self._root = root
        self._store = store
        self._interval = interval
        self._fileset = FileSet()
        self._seen: Fingerprint = {}

    async def load(self) -> None:
        """Read the directory now (only what changed since the last look)."""
        current = await asyncio.to_thread(fingerprint, self._root)
        changed = sorted(p for p, f in current.items() if self._seen.get(p) != f)
        gone = [p for p in self._seen if p not in current]
        if not changed and not gone:
            return
        # The change started when the newest file was written, not when the poll noticed it.
        newest = max((current[p][0] for p in changed), default=time.time_ns())
        at = time.monotonic() - max(0.0, (time.time_ns() - newest) / 1e9)
        texts = await asyncio.to_thread(_read_changed, changed)
        self._seen = current
        committed = self._fileset.update({**dict.fromkeys(gone), **texts})
        problems = self._fileset.problems()
        for problem in problems:
            if problem.origin in texts:
                log.warning("resource rejected: %s", problem, extra={"event": "resource_rejected"})
        self._store.set_problems(SOURCE, str(self._root), problems)
        self._store.update(SOURCE, committed.served, at=at)
        log.info(
            "loaded %d changed files (%d resources changed, %d problems)",
            len(changed) + len(gone),
            len(committed.served),
            len(problems),
            extra={"event": "files_loaded"},
        )

    async def watch(self, stop: asyncio.Event) -> None:
        """Poll every `interval` seconds and load what changed, until `stop` is set."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._interval)
            await self.load()
