"""Typed configuration on jsonargparse: parsers built from dataclass signatures, YAML with a bound on alias
expansion, ``--key value`` command lines and one-line errors.

Every command of ``lambdanet`` builds its options here from the dataclasses that hold them, so a field added to a
dataclass is an option, a recipe key and a ``--help`` line (its type, default and the sentence of the class
docstring's ``Attributes:`` section) without further code. Values given on the command line are YAML.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import json
import re
import sys
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentParser, Namespace, _typehints, set_loader, set_parsing_settings

__all__ = [
    "MAX_YAML_NODES",
    "ConfigError",
    "build",
    "config_parser",
    "fail",
    "field_types",
    "load_yaml",
    "parse",
    "read_yaml_mapping",
    "split_section",
]

MAX_YAML_NODES = 100_000
"""A YAML document may expand (aliases followed) to at most this many nodes; recipes have about a hundred."""

_MODE = "lambdanet_yaml"
_BOOL_WORDS = ("true", "false", "yes", "no", "on", "off")

# A value that names a class (``class_path``) stays a plain dict: no file or option we read may import or run code.
set_parsing_settings(instantiate_subclass_spec_in_any=False, docstring_parse_attribute_docstrings=True)
# The setting above stops instantiation, but jsonargparse still imports the named module to check an ``Any``-typed
# value (``model.overrides``); a value naming a class is passed through as data before that check.
# tests/test_train_config.py::test_values_naming_classes_stay_data_and_import_nothing guards this.
_adapt_any = _typehints.adapt_classes_any


def _adapt_any_as_data(val: Any, *args: Any, **kwargs: Any) -> Any:
    if _typehints.is_subclass_spec(val):
        return val
    return _adapt_any(val, *args, **kwargs)


_typehints.adapt_classes_any = _adapt_any_as_data


class ConfigError(ValueError):
    """A bad configuration value, key or file; the message is one line naming the key, the value and the rule."""


# ---------------------------------------------------------------------------------------------------- YAML


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Safe YAML that reads ``1e-4`` as a number and refuses documents whose aliases expand past a bound."""

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return self.construct_document(node)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def _check_expansion(root: yaml.Node) -> None:
    """Count the nodes of ``root`` with every alias expanded (memoised: linear in the document, not the expansion)."""
    size: dict[int, int] = {}
    open_: set[int] = set()

    def count(node: yaml.Node) -> int:
        key = id(node)
        if key in size:
            return size[key]
        if key in open_:
            raise ConfigError("the document has a recursive alias; refused")
        open_.add(key)
        children = node.value if isinstance(node, (yaml.SequenceNode, yaml.MappingNode)) else ()
        total = 1 + sum(count(c) for child in children for c in (child if isinstance(child, tuple) else (child,)))
        open_.discard(key)
        if total > MAX_YAML_NODES:
            raise ConfigError(
                f"the document expands to more than {MAX_YAML_NODES} nodes through aliases (an alias bomb?); refused"
            )
        size[key] = total
        return total

    count(root)


def load_yaml(text: str, source: str = "YAML") -> Any:
    """Parse ``text`` with the bounded safe loader; ``ConfigError`` names ``source`` on any problem."""
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:
        raise ConfigError(f"{source} is not valid YAML: {' '.join(str(e).split())}") from e
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from e
    except RecursionError as e:
        raise ConfigError(f"{source} is nested too deeply; refused") from e
    finally:
        loader.dispose()


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A YAML file that must hold a non-empty mapping."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{what} {str(path)!r} cannot be read: {e.strerror or e}") from e
    data = load_yaml(text, f"{what} {path}")
    if data is None:
        raise ConfigError(f"{what} {path} is empty; expected a mapping of keys to values")
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a mapping of keys to values, got {type(data).__name__}")
    return data


_refused: list[str] = []  # values the loader refused during the current parse (jsonargparse hides the reason)


def _load_value(text: str) -> Any:
    try:
        return load_yaml(text, "value")
    except ConfigError as e:
        _refused.append(str(e))
        raise


set_loader(_MODE, _load_value, exceptions=(yaml.YAMLError,))

# ---------------------------------------------------------------------------------------------------- types


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def field_types(cls: type, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> annotation of every leaf field of dataclass ``cls`` (nested dataclasses are groups)."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_dataclass_type(tp):
            out.update(field_types(tp, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = tp
    return out


def _arms(tp: Any) -> tuple[Any, ...]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return tuple(a for a in typing.get_args(tp) if a is not type(None))
    return (tp,)


def _is_bool(tp: Any) -> bool:
    return _arms(tp) == (bool,)


def _is_list(tp: Any) -> bool:
    origin = typing.get_origin(_arms(tp)[0]) or _arms(tp)[0]
    return len(_arms(tp)) == 1 and origin in (list, tuple, collections.abc.Sequence)


def _is_dict(tp: Any) -> bool:
    origin = typing.get_origin(_arms(tp)[0]) or _arms(tp)[0]
    return origin in (dict, collections.abc.Mapping)


def type_name(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "").replace("collections.abc.", "").replace("NoneType", "None")


# ---------------------------------------------------------------------------------------------------- parsers


def config_parser(
    *groups: type | tuple[str, type], prog: str, description: str, usage: str | None = None, extra: Iterable[tuple] = ()
) -> ArgumentParser:
    """A jsonargparse parser whose options are the fields of the dataclasses ``groups``.

    A group is a dataclass (its fields at the top level; fields without a default are positional) or a pair
    ``(section, dataclass)`` (options ``--section.field``).

    ``extra``: ``(flags, kwargs)`` pairs of further options (not config keys, e.g. ``-c`` or ``--print-config``).
    """
    parser = ArgumentParser(
        prog=prog,
        description=description,
        usage=usage or f"{prog} [--KEY VALUE ...] (--help lists every key)",
        exit_on_error=False,
        allow_abbrev=False,
        parser_mode=_MODE,
    )
    for flags, kwargs in extra:
        parser.add_argument(*flags, **kwargs)
    parser.lambdanet_keys = {}  # type: ignore[attr-defined]
    parser.lambdanet_required = []  # type: ignore[attr-defined]
    for group in groups:
        key, cls = group if isinstance(group, tuple) else (None, group)
        parser.add_class_arguments(cls, nested_key=key, fail_untyped=True, instantiate=False, as_positional=True)
        _shared_docs(parser, cls, key)
        parser.lambdanet_keys.update(field_types(cls, f"{key}." if key else ""))  # type: ignore[attr-defined]
        parser.lambdanet_required += [  # type: ignore[attr-defined]
            f"{key}.{f.name}" if key else f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
    _plain_help(parser)
    return parser


def _plain_help(parser: ArgumentParser) -> None:
    """Help texts come from reST docstrings: ````x```` and ``:func:`x``` read as ```x``` on a terminal."""
    groups = list((getattr(parser, "groups", None) or {}).values())  # jsonargparse's groups of class arguments
    for item in [parser, *parser._actions, *parser._action_groups, *groups]:
        for attr in ("help", "description", "title"):
            text = getattr(item, attr, None)
            if isinstance(text, str) and "`" in text:
                setattr(item, attr, re.sub(r":[a-z]+:`", "`", text.replace("``", "`")))  # also :func:`x` -> `x`


def _shared_docs(parser: ArgumentParser, cls: type, key: str | None) -> None:
    """Help for fields documented together (``batch, dim: layer shape.``), which docstring_parser keeps as one."""
    import docstring_parser

    docs = {}
    for param in docstring_parser.parse(cls.__doc__ or "").params:
        names = [n.strip() for n in param.arg_name.split(",")]
        if len(names) > 1:
            docs.update(dict.fromkeys(names, param.description))
    for action in parser._actions:
        name = action.dest.removeprefix(f"{key}.") if key else action.dest
        if name in docs and not action.help:
            action.help = docs[name]


def split_section(argv: list[str], section: str) -> tuple[list[str], list[str]]:
    """``argv`` as (the ``--section.*`` options with their values, the rest); such an option takes one value."""
    mine: list[str] = []
    rest: list[str] = []
    take = False
    for arg in argv:
        if arg.startswith("--") and arg[2:].startswith(section + "."):
            mine.append(arg)
            take = "=" not in arg
        elif take and not arg.startswith("--"):
            mine.append(arg)
            take = False
        else:
            rest.append(arg)
            take = False
    return mine, rest


def normalize_argv(keys: Mapping[str, Any], argv: list[str]) -> list[str]:
    """Shell habits to jsonargparse syntax, from the field types alone.

    ``--dim-k 4`` -> ``--dim_k 4``; a bare boolean ``--compile`` -> ``--compile=true``; ``--no-compile`` ->
    ``--compile=false``; ``--sides 8 16`` (several words for a list) -> ``--sides=["8", "16"]``.
    """
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("--") or arg == "--":
            out.append(arg)
            continue
        name, eq, value = arg[2:].partition("=")
        under = name.replace("-", "_")
        if under in keys:
            name = under
        elif under.startswith("no_") and under[3:] in keys and _is_bool(keys[under[3:]]) and not eq:
            out.append(f"--{under[3:]}=false")
            continue
        if eq:
            out.append(f"--{name}={value}")
            continue
        words = []
        while i < len(argv) and not argv[i].startswith("--"):
            words.append(argv[i])
            i += 1
        tp = keys.get(name)
        if tp is not None and _is_bool(tp):
            if words and words[0].lower() in _BOOL_WORDS:
                out.append(f"--{name}={words.pop(0)}")
            else:
                out.append(f"--{name}=true")
        elif tp is not None and _is_list(tp) and words and not words[0].lstrip().startswith(("[", "(")):
            out.append(f"--{name}={json.dumps(words)}")
            words = []
        elif words:  # one value; "--key=value" keeps argparse from reading "-1e-4" as an option
            out.append(f"--{name}={words.pop(0)}")
        else:
            out.append(f"--{name}")
        out.extend(words)  # positionals
    return out


def _merge_dict_fields(keys: Mapping[str, Any], base: Namespace, data: Mapping[str, Any], prefix: str = "") -> None:
    """Check that groups are mappings; let a mapping given for a ``dict`` field update the current one in place."""
    for k, v in list(data.items()):
        key = f"{prefix}{k}"
        if any(other.startswith(key + ".") for other in keys):  # a group
            if v is None:
                data.pop(k)  # type: ignore[attr-defined]
            elif not isinstance(v, Mapping):
                raise ConfigError(f"{key}={v!r} must be a mapping of keys (a section), got {type(v).__name__}")
            else:
                _merge_dict_fields(keys, base, v, key + ".")
        elif key in keys and _is_dict(keys[key]) and isinstance(v, Mapping):
            current = base.get(key)
            if isinstance(current, Mapping):
                data[k] = {**current, **v}  # type: ignore[index]


def parse(
    parser: ArgumentParser,
    layers: Iterable[Mapping[str, Any] | tuple[str, Mapping[str, Any]]] = (),
    argv: list[str] | None = None,
) -> Namespace:
    """Defaults <- each mapping of ``layers`` <- the command line ``argv``, type-checked, as a Namespace.

    A layer is a mapping or ``(source, mapping)``; errors in it start with ``source:`` (e.g. the recipe's path).

    Raises:
        ConfigError: one line for an unknown key (with the closest valid ones), an ill-typed value or a bad file.
    """
    keys: dict[str, Any] = parser.lambdanet_keys  # type: ignore[attr-defined]
    ns = parser.get_defaults()
    for layer in layers:
        source, data = layer if isinstance(layer, tuple) else ("", layer)
        data = _copy(data)
        try:
            _merge_dict_fields(keys, ns, data)
            ns = _parse_step(keys, lambda: parser.parse_object(data, namespace=ns))  # noqa: B023
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}" if source else str(e)) from e
    if argv:
        args = normalize_argv(keys, argv)
        ns = _parse_step(keys, lambda: parser.parse_args(args, namespace=ns))
    missing = [k for k in parser.lambdanet_required if ns.get(k) is None]  # type: ignore[attr-defined]
    if missing:
        raise ConfigError(f"{missing[0]} is required ({parser.prog} --help)")
    return ns


def _parse_step(keys: Mapping[str, Any], step: Any) -> Namespace:
    _refused.clear()
    try:
        return step()
    except ConfigError:
        raise
    except Exception as e:  # jsonargparse raises ArgumentError (and TypeError/ValueError from loaders)
        line = _one_line(str(e), keys)
        if _refused:
            line = f"{line.split('=')[0]}: {_refused[-1]}"
        raise ConfigError(line) from e


def build(cls: type, ns: Namespace) -> Any:
    """An instance of the flat dataclass ``cls`` from the top-level values of a parsed namespace."""
    return cls(**{f.name: ns.get(f.name) for f in dataclasses.fields(cls)})


def _copy(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {k: _copy(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_copy(v) for v in data]
    return data


def _suggest(key: str, keys: Iterable[str]) -> str:
    keys = list(keys)
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
    if not close:  # a right leaf in the wrong section, or a right section with a typo in the leaf
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in keys if k.rsplit(".", 1)[-1] == leaf][:3]
    return f"; did you mean {', '.join(close)}?" if close else "; --help lists the valid keys"


def _one_line(message: str, keys: Mapping[str, Any]) -> str:
    """jsonargparse's (often multi-line) error as one line naming the key, the value and what was expected."""
    m = re.search(r"unrecognized arguments: (\S+)", message)
    if m:
        key = m.group(1).lstrip("-").split("=")[0]
        return f"unknown key {key!r}{_suggest(key, keys)}"
    m = re.search(r"Group '([^']+)' does not accept option '([^']+)'", message)
    if m:
        key = f"{m.group(1)}.{m.group(2)}"
        return f"unknown key {key!r}{_suggest(key, keys)}"
    m = re.search(r"(?:Option|Key) '([^']+)' is not (?:accepted|expected)", message)
    if m:
        key = m.group(1)
        return f"unknown key {key!r}{_suggest(key, keys)}"
    m = re.search(r'Parser key "([^"]+)"', message)
    if m:
        key = m.group(1)
        got = re.findall(r"(?:Given|Got) value: (.*)", message)
        value = got[-1].strip() if got else "?"
        expected = type_name(keys[key]) if key in keys else "a valid value"
        return f"{key}={value}: expected {expected}"
    m = re.search(r"argument (\S+): expected one argument", message)
    if m:
        return f"{m.group(1)} needs a value"
    return " ".join(message.split())


def fail(prog: str, error: BaseException | str) -> int:
    """Print ``prog: error: <one line>`` on stderr; the exit status of a usage or configuration error (2)."""
    text = " ".join(str(error).split()) or type(error).__name__
    print(f"{prog}: error: {text}", file=sys.stderr)
    return 2
