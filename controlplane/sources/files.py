"""Directory source: every *.yaml / *.yml file under a directory, polled for changes.

`FileSet` (pure) turns file contents into accepted resources and problems, keeping the last
accepted version of a resource whose document became invalid, and every resource of a file that no
longer parses, so a typo never takes routing down. `watch_directory` is the I/O edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path

import yaml

from controlplane.model import Resource, ResourceKey
from controlplane.store import Store
from controlplane.validate import Problem, check_references, parse_document

log = logging.getLogger("controlplane.sources.files")

SOURCE = "files"


class FileSet:
    """Accepted resources of a set of files, with last-known-good fallback."""

    def __init__(self) -> None:
        # key -> (resource, file it came from), the last accepted version of each resource
        self._good: dict[ResourceKey, tuple[Resource, str]] = {}

    def load(
        self, files: Mapping[str, str], *, default_namespace: str = "default"
    ) -> tuple[dict[ResourceKey, Resource], tuple[Problem, ...]]:
        """Validate all files (path -> text); return accepted resources and problems."""
        accepted: dict[ResourceKey, tuple[Resource, str]] = {}
        problems: list[Problem] = []
        for path in sorted(files):
            try:
                docs = [d for d in yaml.safe_load_all(files[path]) if d is not None]
            except yaml.YAMLError as error:
                kept = {k: v for k, v in self._good.items() if v[1] == path}
                problems.append(
                    Problem(
                        origin=path,
                        resource="",
                        path="",
                        message=f"YAML syntax error, file ignored ({len(kept)} resources from its "
                        f"last good version keep serving): {_one_line(error)}",
                    )
                )
                for kept_key, value in kept.items():
                    accepted.setdefault(kept_key, value)
                continue
            for doc in docs:
                parsed = parse_document(doc, origin=path, default_namespace=default_namespace)
                problems += parsed.problems
                key = parsed.key
                if key is None:
                    continue
                if key in accepted:
                    problems.append(
                        Problem(
                            origin=path,
                            resource=str(key),
                            path="metadata.name",
                            message=f"also defined in {accepted[key][1]}; this copy is ignored",
                        )
                    )
                elif parsed.resource is not None:
                    accepted[key] = (parsed.resource, path)
                elif key in self._good:
                    accepted[key] = self._good[key]
                    problems.append(
                        Problem(
                            origin=path,
                            resource=str(key),
                            path="",
                            message="rejected; the last accepted version keeps serving",
                        )
                    )
        problems += _reject_broken_references(accepted, self._good)
        self._good = accepted
        return {k: v[0] for k, v in accepted.items()}, tuple(problems)


def _reject_broken_references(
    accepted: dict[ResourceKey, tuple[Resource, str]],
    good: Mapping[ResourceKey, tuple[Resource, str]],
) -> list[Problem]:
    """Drop (or roll back to their last good version) resources whose references do not resolve."""
    resources = {k: v[0] for k, v in accepted.items()}
    problems: list[Problem] = []
    for key, found in check_references(resources, origin=lambda k: accepted[k][1]).items():
        problems += found
        previous = good.get(key)
        if previous is not None and previous[0] == accepted[key][0]:
            continue  # already serving; the problem is reported, nothing changes
        if previous is not None:
            accepted[key] = previous
            problems.append(
                Problem(
                    origin=accepted[key][1],
                    resource=str(key),
                    path="",
                    message="rejected; the last accepted version keeps serving",
                )
            )
        else:
            del accepted[key]
    return problems


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


def _fingerprint(root: Path) -> tuple[tuple[str, int, int], ...]:
    items = []
    for path in [*root.rglob("*.yaml"), *root.rglob("*.yml")]:
        try:
            stat = path.stat()
        except OSError:
            continue
        items.append((str(path), stat.st_mtime_ns, stat.st_size))
    return tuple(sorted(items))


def load_into(store: Store, fileset: FileSet, files: Mapping[str, str]) -> None:
    """Validate file contents and hand the result to the store, logging each problem."""
    resources, problems = fileset.load(files)
    for problem in problems:
        log.warning("resource rejected: %s", problem, extra={"event": "resource_rejected"})
    store.replace_resources(SOURCE, resources, problems)
    log.info(
        "loaded %d resources from %d files (%d problems)",
        len(resources),
        len(files),
        len(problems),
        extra={"event": "files_loaded"},
    )


class DirectorySource:
    """Keeps the store's `files` slice equal to the (valid) contents of a directory."""

    def __init__(self, root: Path, store: Store, *, interval: float = 0.1) -> None:
        self._root = root
        self._store = store
        self._interval = interval
        self._fileset = FileSet()
        self._seen: tuple[tuple[str, int, int], ...] = ()

    async def load(self) -> None:
        """Read the directory now."""
        self._seen = await asyncio.to_thread(_fingerprint, self._root)
        load_into(self._store, self._fileset, await asyncio.to_thread(read_directory, self._root))

    async def watch(self, stop: asyncio.Event) -> None:
        """Poll every `interval` seconds and reload when any file changed, until `stop` is set."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._interval)
            if await asyncio.to_thread(_fingerprint, self._root) != self._seen:
                await self.load()
