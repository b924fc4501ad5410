"""Command-line options made from a config dataclass, so that every config key can be set from the command line and
its default and help live in one place (the dataclass field and its comment in ``config.py``).

A field ``image_size: int = 224  # square input side in pixels`` becomes ``--image-size INTEGER`` with that help and
``[config default: 224]``; a nested config (``preprocess``) contributes its own fields (``--roi``, ``--intensity``);
booleans become ``--flag/--no-flag``; ``list[str]`` fields are repeatable; fixed tuples take several values. Options
left out are ``None`` and leave the YAML file's value or the default in place.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Callable
from functools import cache
from typing import Annotated, Any

import typer

#: extra spellings kept for commands written before the options were generated
ALIASES: dict[str, tuple[str, ...]] = {"model": ("-m",), "output": ("-o",), "mixup_alpha": ("--mixup",),
                                       "cutmix_alpha": ("--cutmix",)}


@cache
def field_comments(cls: type) -> dict[str, str]:
    """``{field: its help}`` from the dataclass source: the field's trailing comment, else its line in the class
    docstring's ``Attributes:`` section."""
    out = {}
    for m in re.finditer(r"^\s{8}(\w+): (.+(?:\n\s{12}.+)*)", (cls.__doc__ or "").split("Attributes:")[-1], re.M):
        out[m.group(1)] = " ".join(m.group(2).split()).replace("``", "").rstrip(".")
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s{4}(\w+): [^=]+=.*?#\s*(.+)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def _option_type(annotation: Any) -> Any:
    """The type typer parses for a field (``None`` for fields only a YAML file can set, such as mappings)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = args[0] if len(args) == 1 else str
    origin = typing.get_origin(annotation)
    if origin is dict or annotation is dict:
        return None
    if origin is list:
        return list[typing.get_args(annotation)[0]]
    return annotation


def config_parameters(cls: type, skip: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """One keyword parameter (a typer option, default ``None``) per settable field of ``cls`` and of its nested
    config dataclasses."""
    hints = typing.get_type_hints(cls)
    helps = field_comments(cls)
    params = []
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name.endswith("_sha256"):
            continue
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            params += config_parameters(hint, skip)
            continue
        typ = _option_type(hint)
        if typ is None:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        flag = "--" + f.name.replace("_", "-")
        names = (f"{flag}/--no-{f.name.replace('_', '-')}",) if typ is bool else (flag,)
        shown = "none" if default is None else default
        help_text = f"{helps.get(f.name, f.name.replace('_', ' '))} (default: {shown})"
        option = typer.Option(*names, *ALIASES.get(f.name, ()), help=help_text, show_default=False)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Annotated[typ | None, option]))
    return params


def with_config_options(cls: type, skip: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """Decorate a command ``fn(*, own options..., overrides: dict)``: typer sees ``fn``'s own options plus one
    option per config field; ``fn`` receives the fields that were given as ``overrides`` (flat keys)."""

    def wrap(fn: Callable) -> Callable:
        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.name != "overrides"]
        generated = [p for p in config_parameters(cls, skip) if p.name not in {q.name for q in own}]
        names = {p.name for p in generated}

        def command(**kwargs: Any) -> Any:
            overrides = {k: (tuple(v) if isinstance(v, list) and k == "split" else v)
                         for k, v in kwargs.items() if k in names and v is not None and v != []}
            return fn(**{k: v for k, v in kwargs.items() if k not in names}, overrides=overrides)

        command.__signature__ = inspect.Signature(own + generated)  # type: ignore[attr-defined]
        command.__name__, command.__doc__ = fn.__name__, fn.__doc__
        return command

    return wrap
