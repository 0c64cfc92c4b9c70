"""Typed settings: a dataclass per workflow, and its flags and checks made from it.

A setting is a dataclass field made with :func:`setting`; its metadata holds
the help text and the unit, so each knob is written once. From the dataclass
come the command-line flags (:func:`add_arguments`, ``fix_symmetry`` ->
``--fix-symmetry``), the values read back from them (:func:`from_namespace`)
and the check of a mapping such as a study's stage settings
(:func:`from_mapping`: an unknown key is an error naming the closest valid one,
a value of the wrong type names the type expected).

Types understood: ``bool``, ``int``, ``float``, ``str``, ``Literal[...]``,
``tuple[T, T, T]`` (a fixed number of values), ``tuple[T, ...]`` and any of
them ``| None`` (for a number, the word ``none`` on the command line;
``none_at_or_below`` keeps older spellings such as ``--grid-l-max -1``).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
from collections.abc import Collection, Mapping
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints


def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",
    unit: str | None = None,
    *,
    flag: str | None = None,
    metavar: str | None = None,
    nargs: str | int | None = None,
    none_at_or_below: float | None = None,
    cli: bool = True,
) -> Any:
    """A dataclass field with its help text and unit.

    Args:
        default: the default value (immutable: use tuples, not lists).
        help: what the setting does, for ``--help`` and error messages.
        unit: the unit of a quantity ("eV/A", "fs", "K"), shown after the help.
        flag: the command-line flag when it is not ``--<name-with-dashes>``.
        metavar: the placeholder shown in ``--help``.
        nargs: for ``tuple[T, ...]``: ``"+"`` (default) or ``"*"`` (may be empty).
        none_at_or_below: values at or below this mean None (the setting is off).
        cli: False keeps the setting out of the flags and the stage settings.
    """
    metadata = {
        "help": help,
        "unit": unit,
        "flag": flag,
        "metavar": metavar,
        "nargs": nargs,
        "none_at_or_below": none_at_or_below,
        "cli": cli,
    }
    return dataclasses.field(default=default, metadata=metadata)


def settable(cls: type, only: Collection[str] | None = None) -> list[dataclasses.Field]:
    """The fields of ``cls`` that flags and mappings may set (all, or those in ``only``)."""
    return [
        f
        for f in dataclasses.fields(cls)
        if f.metadata.get("cli", True) and (only is None or f.name in only)
    ]


def names(cls: type, only: Collection[str] | None = None) -> list[str]:
    """Names of the settable fields of ``cls``."""
    return [f.name for f in settable(cls, only)]


def _split_optional(hint: Any) -> tuple[Any, bool]:
    """(T, True) for ``T | None``, else (hint, False)."""
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(get_args(hint)) == 2:
            return args[0], True
    return hint, False


def _describe(hint: Any) -> str:
    """A type as a person reads it: ``int``, ``one of 'fire', 'bfgs'``, ``3 ints``."""
    base, optional = _split_optional(hint)
    if get_origin(base) is Literal:
        text = "one of " + ", ".join(repr(c) for c in get_args(base))
    elif get_origin(base) is tuple:
        args = get_args(base)
        if len(args) == 2 and args[1] is Ellipsis:
            text = f"a list of {args[0].__name__}"
        else:
            text = f"a list of {len(args)} {args[0].__name__}"
    else:
        text = getattr(base, "__name__", str(base))
    return text + (" or null" if optional else "")


def _scalar(kind: Any, value: Any) -> Any:
    """``value`` as ``kind`` (int, float, str, bool), or ValueError."""
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif kind is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"settings of type {kind!r} are not supported")
    raise ValueError


def convert(f: dataclasses.Field, hint: Any, value: Any, where: str) -> Any:
    """A mapping's value for field ``f`` checked and converted to the field's type.

    Raises:
        ValueError: naming ``where``, the setting, the value and the type expected.
    """
    base, optional = _split_optional(hint)
    try:
        if value is None:
            if optional:
                return None
            raise ValueError
        if get_origin(base) is Literal:
            if value not in get_args(base):
                raise ValueError
            return value
        if get_origin(base) is tuple:
            args = get_args(base)
            if not isinstance(value, list | tuple):
                raise ValueError
            if len(args) == 2 and args[1] is Ellipsis:
                return _turned_off(f, tuple(_scalar(args[0], v) for v in value))
            if len(value) != len(args):
                raise ValueError
            return tuple(_scalar(a, v) for a, v in zip(args, value))
        return _turned_off(f, _scalar(base, value))
    except ValueError:
        raise ValueError(
            f"{where}: setting {f.name!r} = {value!r}: expected {_describe(hint)}"
        ) from None


def _turned_off(f: dataclasses.Field, value: Any) -> Any:
    """None where ``none_at_or_below`` says the value switches the setting off."""
    limit = f.metadata.get("none_at_or_below")
    if limit is not None and isinstance(value, int | float) and value <= limit:
        return None
    return value


def check_keys(raw: Mapping[str, Any], valid: Collection[str], where: str) -> None:
    """Fail on the first key of ``raw`` not in ``valid``, naming the closest valid one."""
    for key in raw:
        if key not in valid:
            close = difflib.get_close_matches(str(key), list(valid), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"{where}: unknown setting {key!r}{hint} (valid: {', '.join(sorted(valid))})"
            )


def from_mapping(
    cls: type, raw: Mapping[str, Any], where: str, only: Collection[str] | None = None
) -> Any:
    """An instance of the settings dataclass ``cls`` from a mapping of its fields.

    Args:
        cls: the settings dataclass.
        raw: setting name -> value (YAML types: lists for tuples).
        where: names the mapping in errors, e.g. ``study.evaluate[0] (relax)``.
        only: the fields that may be set (default: every settable one).

    Raises:
        ValueError: an unknown key (with the closest valid name) or a bad value.
    """
    fields = {f.name: f for f in settable(cls, only)}
    check_keys(raw, fields, where)
    hints = get_type_hints(cls)
    values = {k: convert(fields[k], hints[k], v, where) for k, v in raw.items()}
    missing = [
        n
        for n, f in fields.items()
        if n not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ValueError(f"{where}: missing setting(s) {', '.join(missing)}")
    return cls(**values)


def _flag_help(f: dataclasses.Field) -> str:
    text = f.metadata.get("help", "")
    if f.metadata.get("unit"):
        text += f" [{f.metadata['unit']}]"
    if f.default not in (dataclasses.MISSING, None, False, ()):
        shown = " ".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
        text += f" (default: {shown})"
    return text.replace("%", "%%")


def _parse_as(kind: Any, optional: bool):
    """The argparse ``type`` for ``kind``; ``none`` gives None for an optional number.

    Text stays text: for ``--reference-model none`` the word itself is the value.
    """

    def parse(text: str) -> Any:
        if optional and kind is not str and text.lower() == "none":
            return None
        return kind(text)

    parse.__name__ = kind.__name__  # argparse names it in "invalid int value"
    return parse


def add_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    only: Collection[str] | None = None,
    required: Collection[str] = (),
) -> None:
    """One flag per settable field of ``cls``, its value stored under the field name.

    Args:
        parser: a parser or an argument group.
        cls: the settings dataclass.
        only: the fields to add (default: every settable one).
        required: fields whose flag must be given even though they have a default.
    """
    hints = get_type_hints(cls)
    for f in settable(cls, only):
        meta = f.metadata
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        base, optional = _split_optional(hints[f.name])
        kwargs: dict[str, Any] = {"dest": f.name, "help": _flag_help(f)}
        if f.default is dataclasses.MISSING or f.name in required:
            kwargs["required"] = True
        else:
            kwargs["default"] = f.default
        if meta.get("metavar"):
            kwargs["metavar"] = meta["metavar"]
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif get_origin(base) is Literal:
            choices = get_args(base)
            kwargs.update(choices=choices, type=_parse_as(type(choices[0]), optional))
        elif get_origin(base) is tuple:
            args = get_args(base)
            variable = len(args) == 2 and args[1] is Ellipsis
            kwargs["nargs"] = (meta.get("nargs") or "+") if variable else len(args)
            kwargs["type"] = _parse_as(args[0], False)
        else:
            kwargs["type"] = _parse_as(base, optional)
        parser.add_argument(flag, **kwargs)


def from_namespace(
    cls: type, args: argparse.Namespace, only: Collection[str] | None = None, **fixed: Any
) -> Any:
    """The instance of ``cls`` chosen by the flags of :func:`add_arguments`.

    Args:
        cls: the settings dataclass.
        args: the parsed command line.
        only: the fields that have flags (as given to :func:`add_arguments`).
        **fixed: values for fields without a flag.
    """
    values = {}
    for f in settable(cls, only):
        value = getattr(args, f.name)
        values[f.name] = _turned_off(f, tuple(value) if isinstance(value, list) else value)
    return cls(**values, **fixed)
