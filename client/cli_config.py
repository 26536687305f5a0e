"""Command-line options generated from a frozen config dataclass, so flags and config never drift apart.

A field's `metadata` may carry argparse settings: help, nargs, flag (the option string), choices.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _base_type(annotation: Any) -> Any:
    """`int | None` -> int, `tuple[int, ...]` -> int, `Path` -> Path."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    if origin is tuple:
        return typing.get_args(annotation)[0]
    return annotation


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        meta = dict(field.metadata)
        flag = meta.pop("flag", f"--{field.name}")
        base = _base_type(hints[field.name])
        kwargs: dict[str, Any] = {"dest": field.name, "help": meta.pop("help", None)}
        default = field.default if field.default is not dataclasses.MISSING else None
        if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = field.default_factory()  # type: ignore[misc]
        if base is bool:
            # `--static` alone means true; `--static false` is also accepted (the original took any string as true).
            kwargs.update(nargs="?", const=True, type=_parse_bool)
        else:
            kwargs["type"] = base
        kwargs.update(meta)
        if default not in (None, ()) and kwargs.get("help"):  # an empty tuple: a repeatable flag not given
            kwargs["help"] += (
                f" (default: {default if not isinstance(default, tuple) else ' '.join(map(str, default))})"
            )
        kwargs["default"] = default
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            kwargs["required"] = True
        parser.add_argument(flag, **kwargs)


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    values = {}
    for field in dataclasses.fields(cls):
        value = getattr(args, field.name)
        if isinstance(value, list):
            value = tuple(value)
        values[field.name] = value
    return cls(**values)


def config_from_mapping(cls: type[T], mapping: dict[str, Any]) -> T:
    """Build a config from a dict (e.g. JSON), rejecting keys the dataclass does not have."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}")
    return cls(**mapping)


def write_resolved_config(config: object, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write the config a run actually used (plus results) as JSON next to its outputs."""
    path = Path(path)
    data = {"config": dataclasses.asdict(config), **(extra or {})}
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path
