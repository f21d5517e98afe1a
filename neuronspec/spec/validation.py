"""From a merged study tree to a `Study`, with every problem of the file reported in one pass.

Pydantic stops at the fields it rejects, and cross-references (set names, corpora, arms) can
only be checked on a validated study — so a typo in a set name used to surface only after
every schema error was fixed. Here the rejected values are set aside (their defaults apply),
the rest is validated again, and the references of what validates are checked too: one run
of `validate` lists every mistake. A value that fits no branch of a union (a threshold, an
arm's selection) gives one message, from the branch it came closest to, not one per branch.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from neuronspec.spec.errors import Problem, StudyError
from neuronspec.spec.models import Study

#: error types that say "this is not that branch's shape" rather than "this value is wrong"
_MISMATCH = {"literal_error", "union_tag_invalid", "union_tag_not_found", "missing", "extra_forbidden", "model_type",
             "model_attributes_type"}
#: how many rounds of setting rejected values aside (each round removes at least one)
_ROUNDS = 8


def validate_study(data: dict[str, Any], source: Any) -> Study:
    """Validate the plain study tree `data` (located through `source`, a loader SourceMap).
    Raises `StudyError` with the schema problems and the reference problems of the rest."""
    from neuronspec.spec.references import check_references

    problems: list[Problem] = []
    pruned: list[tuple[str | int, ...]] = []
    work = data
    for _ in range(_ROUNDS):
        try:
            study = Study.model_validate(work)
        except ValidationError as exc:
            errors = _one_branch_per_union(exc.errors(), work)
            if not problems:
                problems = _problems(errors, source)
            work = copy.deepcopy(work) if work is data else work
            removed = _set_aside(work, errors)
            if not removed:
                break  # a required field is missing or wrong: nothing further can be checked
            pruned += removed
            continue
        seen = {(p.path, p.message) for p in problems}
        for loc, message in check_references(study):
            if any(tuple(loc[: len(p)]) == p or tuple(p[: len(loc)]) == tuple(loc) for p in pruned):
                continue  # a consequence of a value already reported
            problem = source.problem(loc, message)
            if (problem.path, problem.message) not in seen:
                problems.append(problem)
        if not problems:
            return study
        break
    raise StudyError(problems)


def _problems(errors: list[dict[str, Any]], source: Any) -> list[Problem]:
    """One located problem per field; several messages for one field are joined."""
    by_place: dict[str, tuple[Any, str, list[str]]] = {}
    for err in errors:
        location, dotted = source.locate(err["loc"])
        _, _, messages = by_place.setdefault(f"{location}|{dotted}", (location, dotted, []))
        messages.append(err["msg"].removeprefix("Value error, "))
    out = []
    for location, dotted, messages in by_place.values():
        specific = [m for m in messages if not m.startswith("Input should be a valid")] or messages
        out.append(Problem(location, dotted, "; ".join(dict.fromkeys(specific))))
    return out


def _mismatch(err: dict[str, Any]) -> bool:
    return err["type"].endswith("_type") or err["type"] in _MISMATCH or "[key]" in err["loc"]


def _one_branch_per_union(errors: list[dict[str, Any]], tree: dict[str, Any]) -> list[dict[str, Any]]:
    """Pydantic reports a value that fits no member of a union once per member (`epsilon:
    {quantile: 1.5}` → "not a number", "less than 1", "not a site name"). Keep the errors of
    the member that accepted the value's shape and rejected a value in it; when no member did,
    else the member that needs the fewest changes; on a tie, all of them (then the shape itself is
    the mistake, and what each member needs is news)."""
    unions: dict[tuple[Any, ...], dict[Any, list[dict[str, Any]]]] = {}
    out: list[dict[str, Any]] = []
    for err in errors:
        _, skip = _walk(tree, err["loc"])
        if skip is None or skip == len(err["loc"]) - 1:  # no tag (a last part not in the tree is a missing key)
            out.append(err)
        else:
            unions.setdefault(tuple(err["loc"][:skip]), {}).setdefault(err["loc"][skip], []).append(err)
    for members in unions.values():
        fitting = [errs for errs in members.values() if not all(_mismatch(e) for e in errs)]
        fewest = min(len(errs) for errs in members.values())
        closest = [errs for errs in members.values() if len(errs) == fewest]
        if fitting:
            out += [e for e in fitting[0] if not _mismatch(e)]
        elif len(closest) == 1:  # one member needs fewer changes (a per-site dict with one bad site)
            out += closest[0]
        else:
            out += [e for errs in members.values() for e in errs]
    return out


def _set_aside(data: dict[str, Any], errors: list[dict[str, Any]]) -> list[tuple[str | int, ...]]:
    """Delete each rejected value from `data` (its field's default applies in the next round);
    returns the paths deleted, or [] when some error has no value to delete (a missing field).
    A rejected list item takes its whole list with it: deleting the item would shift the
    positions that later problems are located by."""
    paths = []
    for err in errors:
        walked, skip = _walk(data, err["loc"])
        if skip is not None and skip < len(err["loc"]) - 1:  # inside a union: set the whole value aside
            walked = list(err["loc"][:skip])
        while walked and isinstance(walked[-1], int):
            walked.pop()
        if not walked or err["type"] == "missing":
            return []
        paths.append(tuple(walked))
    removed = []
    for path in sorted(set(paths), key=lambda p: (len(p), [str(s) for s in p]), reverse=True):
        node: Any = data
        for part in path[:-1]:
            node = node[part]
        if isinstance(node, dict) and path[-1] in node:
            del node[path[-1]]
            removed.append(path)
    return removed


def _walk(tree: Any, loc: Sequence[str | int]) -> tuple[list[str | int], int | None]:
    """The parts of `loc` that are keys/indices in `tree`, and the index in `loc` of the first
    part that is not (a union member's tag, or a key absent from the tree)."""
    node, walked, first_skip = tree, [], None
    for i, part in enumerate(loc):
        if isinstance(node, dict) and not isinstance(part, int) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            if first_skip is None:
                first_skip = i
            continue
        walked.append(part)
    return walked, first_skip
