"""Load ``drkit.yaml``: parse YAML keeping line numbers, validate, report every error at once.

Each problem reads ``file:line: at 'path': message`` so that an operator can jump to it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union, cast

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model

from drkit.config.models import Config
from drkit.errors import BadRequestError, ConfigError

Loc = tuple[str | int, ...]


def find_config_path(explicit: str | os.PathLike[str] | None) -> Path:
    """Where the config is: ``explicit``, else ``$DRKIT_CONFIG``, else ``./config/drkit.yaml``."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("DRKIT_CONFIG")
    if env:
        return Path(env)
    return Path("config") / "drkit.yaml"


def read_yaml(path: Path) -> tuple[Any, dict[Loc, int], list[str]]:
    """Parse ``path``; return (data, line of each location, duplicate-key problems).

    Raises :class:`BadRequestError` when the file is missing or is not YAML.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadRequestError(
            f"no config at {path}", hint="create one with 'drkit init' or pass --config PATH"
        ) from None
    except OSError as exc:
        raise BadRequestError(f"cannot read {path}: {exc.strerror}") from None
    # Parsed once (the node tree gives the lines, the data is built from it), with libyaml
    # when PyYAML has it: the config and every plan are read at each command's start.
    # The lines are indexed before the data is built: building flattens YAML merge keys
    # (``<<: *anchor``) into the node tree, which would look like duplicate keys.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    lines: dict[Loc, int] = {}
    duplicates: list[str] = []
    try:
        node = loader.get_single_node()
        if node is not None:
            _index_lines(node, (), lines, duplicates, path)
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}: not valid YAML: {problem}"]) from None
    finally:
        loader.dispose()
    return data, lines, duplicates


def _index_lines(
    node: yaml.Node, loc: Loc, lines: dict[Loc, int], dups: list[str], path: Path
) -> None:
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            child = (*loc, key)
            if key in seen:
                dups.append(
                    f"{path}:{key_node.start_mark.line + 1}: at '{format_loc(child)}': "
                    "duplicate key (the later one would silently win)"
                )
            seen.add(key)
            lines[child] = key_node.start_mark.line + 1
            _index_lines(value_node, child, lines, dups, path)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _index_lines(item, (*loc, index), lines, dups, path)


def format_loc(loc: Iterable[str | int]) -> str:
    """``('targets', 'app', 'repositories', 1)`` -> ``targets.app.repositories[1]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def locate(path: Path, lines: dict[Loc, int], loc: Loc, message: str) -> str:
    """Format one problem; the line is that of the deepest part of ``loc`` present in the file."""
    probe = loc
    while probe and probe not in lines:
        probe = probe[:-1]
    line = lines.get(probe, 1)
    return f"{path}:{line}: at '{format_loc(loc)}': {message}"


@functools.cache
def config_model() -> type[Config]:
    """``Config`` with ``targets`` typed as the union of every registered target kind."""
    from drkit.targets import registry

    models = tuple(kind.config_model for kind in registry.all_kinds())
    union: Any = Union[models] if len(models) > 1 else models[0]  # noqa: UP007
    target_type: Any = Field(discriminator="kind") if len(models) > 1 else Field()
    field_type: Any = dict[str, Annotated[union, target_type]]
    model = create_model(
        "Config", __base__=Config, targets=(field_type, Field(default_factory=dict))
    )
    return model


def _clean_loc(loc: Loc, data: Any) -> Loc:
    """Drop the union tags pydantic puts into locations: a target's ``kind`` value, or a
    check's kind key (``sql``) followed by a sibling field, which cannot be inside a scalar."""
    out: list[str | int] = []
    node = data
    for position, part in enumerate(loc):
        more = position + 1 < len(loc)
        if isinstance(node, dict):
            is_kind_tag = part not in node and node.get("kind") == part
            is_key_tag = more and part in node and not isinstance(node[part], dict | list)
            if is_kind_tag or is_key_tag:
                continue
        out.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
    return tuple(out)


def _message(error: dict[str, Any]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid":
        from drkit.targets import registry

        tag = error.get("ctx", {}).get("tag")
        known = ", ".join(registry.kind_names())
        return f"unknown target kind {tag!r} (known kinds: {known})"
    if kind == "union_tag_not_found":
        from drkit.targets import registry

        return f"'kind' is required (one of: {', '.join(registry.kind_names())})"
    msg = str(error["msg"])
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def _cross_references(data: Any) -> Iterator[tuple[Loc, str]]:
    """Checks across sections, done on the raw data so they run even when other parts fail."""
    if not isinstance(data, dict):
        return
    repos = data.get("repositories")
    known = set(repos) if isinstance(repos, dict) else set()
    hint = f" (declared: {', '.join(sorted(known))})" if known else ""
    reports = data.get("reports")
    output = reports.get("output") if isinstance(reports, dict) else None
    s3_output = output.get("s3") if isinstance(output, dict) else None
    if isinstance(s3_output, dict):
        repo = s3_output.get("repository")
        if isinstance(repo, str) and repo not in known:
            yield ("reports", "output", "s3", "repository"), f"unknown repository {repo!r}{hint}"
    repos = repos if isinstance(repos, dict) else {}
    copies = {name: repo.get("copy_from") for name, repo in repos.items()
              if isinstance(repo, dict) and repo.get("copy_from") is not None}
    for name, source in copies.items():
        where = ("repositories", name, "copy_from")
        if source not in known:
            yield where, f"unknown repository {source!r}{hint}"
        elif source == name:
            yield where, "a repository cannot be a copy of itself"
        elif source in copies:
            yield where, (f"{source!r} is itself a copy (of {copies[source]!r}): copy from "
                          "the repository the backups go to")
        elif _s3(repos[name]) is not None and _s3(repos[source]) is not None and \
                _s3(repos[name]) != _s3(repos[source]):
            yield where, ("restic copy gives both repositories the same S3 credentials and "
                          f"region: {name!r} and {source!r} must declare the same keys and "
                          "region")
    targets = data.get("targets")
    if not isinstance(targets, dict):
        return
    for name, target in targets.items():
        if not isinstance(target, dict):
            continue
        listed = target.get("repositories")
        if not isinstance(listed, list):
            continue
        for index, repo in enumerate(listed):
            if isinstance(repo, str) and repo not in known:
                yield ("targets", name, "repositories", index), f"unknown repository {repo!r}{hint}"
            elif isinstance(repo, str) and repo in copies:
                yield (("targets", name, "repositories", index),
                       f"{repo!r} is a copy of {copies[repo]!r}: drkit copy fills it; back up "
                       f"to {copies[repo]!r}")


def _s3(repo: Any) -> Any:
    """An S3 repository's credentials and region as declared (None: not S3)."""
    if not isinstance(repo, dict) or not str(repo.get("url", "")).startswith("s3:"):
        return None
    s3 = repo.get("s3")
    if not isinstance(s3, dict):
        s3 = {}
    return (s3.get("access_key"), s3.get("secret_key"), s3.get("region", "us-east-1"))


M = TypeVar("M", bound=BaseModel)


def validate_located(model: type[M], data: Any, shown: Path, lines: dict[Loc, int], *,
                     context: dict[str, Any]) -> tuple[M | None, list[str]]:
    """Validate ``data`` (read from ``shown``) as ``model``; return it, or None and every
    problem located as ``file:line: at 'path': message``."""
    try:
        return model.model_validate(data, context=context), []
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = _clean_loc(tuple(error["loc"]), data)
            problems.append(locate(shown, lines, loc, _message(cast(dict[str, Any], error))))
        return None, problems


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate the config at ``path`` (see :func:`find_config_path`).

    Returns the validated :class:`Config` with every relative path made absolute against the
    config file's directory. Raises :class:`ConfigError` listing every problem, each located.
    """
    shown = find_config_path(path)  # as the user named it, for messages
    source = shown.absolute()
    data, lines, problems = read_yaml(shown)
    if not isinstance(data, dict):
        raise ConfigError([f"{shown}:1: at '(top level)': expected a mapping of settings"])
    config, found = validate_located(config_model(), data, shown, lines,
                                     context={"base_dir": source.parent})
    problems = [*problems, *found]
    for loc, message in _cross_references(data):
        problems.append(locate(shown, lines, loc, message))
    if problems:
        raise ConfigError(sorted(set(problems), key=_line_of))
    assert config is not None
    return config.model_copy(update={"source": source})


def _line_of(problem: str) -> tuple[int, str]:
    try:
        return int(problem.split(":", 2)[1]), problem
    except (IndexError, ValueError):
        return 0, problem
