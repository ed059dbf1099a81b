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
import functools
import json
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import docstring_parser
import yaml
from jsonargparse import ArgumentParser, Namespace, _typehints, set_loader, set_parsing_settings

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
_typehints.adapt_classes_any = lambda v, *a, **k: v if _typehints.is_subclass_spec(v) else _adapt_any(v, *a, **k)


class ConfigError(ValueError):
    """A bad configuration value, key or file; the message is one line naming the key, the value and the rule."""


# ---------------------------------------------------------------------------------------------------- YAML


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Safe YAML that reads ``1e-4`` as a number (:func:`load_yaml` bounds the alias expansion)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def _check_expansion(root: yaml.Node) -> None:
    """Count the nodes of ``root`` with every alias expanded (memoised: linear in the document, not the expansion)."""
    size: dict[int, int] = {}
    open_: set[int] = set()

    def count(node: yaml.Node) -> int:
        key = id(node)
        if key in open_:
            raise ConfigError("the document has a recursive alias; refused")
        if key not in size:
            open_.add(key)
            children = node.value if isinstance(node, (yaml.SequenceNode, yaml.MappingNode)) else ()
            size[key] = 1 + sum(count(c) for ch in children for c in (ch if isinstance(ch, tuple) else (ch,)))
            open_.discard(key)
        if size[key] > MAX_YAML_NODES:
            raise ConfigError(f"the document expands to more than {MAX_YAML_NODES} nodes through aliases; refused")
        return size[key]

    count(root)


def load_yaml(text: str, source: str = "YAML") -> Any:
    """Parse ``text`` with the bounded safe loader; ``ConfigError`` names ``source`` on any problem."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
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
    if not isinstance(data, dict):
        got = "is empty; expected" if data is None else f"holds a {type(data).__name__}; it must hold"
        raise ConfigError(f"{what} {path} {got} a mapping of keys to values")
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


def field_types(cls: type, prefix: str = "", extras: bool = False) -> dict[str, Any]:
    """Dotted key -> annotation of every leaf field of dataclass ``cls`` (nested dataclasses are groups); ``extras``
    keeps ``Annotated[type, ...]`` whole."""
    hints, out = typing.get_type_hints(cls, include_extras=extras), {}
    for name in (f.name for f in dataclasses.fields(cls)):
        tp = hints[name]
        nested = isinstance(tp, type) and dataclasses.is_dataclass(tp)
        out.update(field_types(tp, f"{prefix}{name}.", extras) if nested else {f"{prefix}{name}": tp})
    return out


def _kind(tp: Any) -> str | None:
    """``"bool"``, ``"list"`` or ``"dict"`` for such an annotation (``| None`` allowed), else None."""
    union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    arms = [a for a in typing.get_args(tp) if a is not type(None)] if union else [tp]
    origin = typing.get_origin(arms[0]) or arms[0]
    if arms == [bool]:
        return "bool"
    if origin in (dict, Mapping):
        return "dict"
    return "list" if len(arms) == 1 and origin in (list, tuple, collections.abc.Sequence) else None


def type_name(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "").replace("collections.abc.", "").replace("NoneType", "None")


_WORDED = re.compile(r"must be (?:null or )?(?:in ([\[(])([-\d.]+), ([-\d.]+)([\])])|(>=?) ([-\d.]+))")


def within(rule: str, v: Any) -> bool:
    """``v`` against a rule worded ``must be [null or ](> x | >= x | in [lo, hi] | in (lo, hi) | ...)``."""
    m = _WORDED.match(rule)
    if m is None:  # a programming error: the domain cannot be read from the rule's words
        raise RuntimeError(f"rule {rule!r} is not worded 'must be [null or ](> x | >= x | in [lo, hi] | in (lo, hi))'")
    lo_side, lo, hi, hi_side, op, bound = m.groups()
    try:
        if op:
            return v > float(bound) or (op == ">=" and v == float(bound))
        low_ok = v > float(lo) or (lo_side == "[" and v == float(lo))
        return low_ok and (v < float(hi) or (hi_side == "]" and v == float(hi)))
    except TypeError:
        return False


def check_domains(obj: Any) -> None:
    """``ConfigError`` (``key=value rule``) for a field of dataclass ``obj`` (or a nested one) outside its domain: a
    ``Literal`` type's values, or the rule worded in its annotation, ``batch: Annotated[int | None, "must be >= 1"]``
    (:func:`within`; ``None`` passes where the type allows it)."""
    for key, tp in field_types(type(obj), extras=True).items():
        value = functools.reduce(getattr, key.split("."), obj)
        if typing.get_origin(tp) is typing.Literal and value not in typing.get_args(tp):
            raise ConfigError(f"{key}={value!r}: expected {type_name(tp)}")
        rule = getattr(tp, "__metadata__", [None])[0]
        if rule and not (value is None and type(None) in typing.get_args(tp.__origin__)) and not within(rule, value):
            raise ConfigError(f"{key}={value!r} {rule}")


# ---------------------------------------------------------------------------------------------------- parsers


def config_parser(
    *groups: type | tuple[str, type], prog: str, description: str, usage: str | None = None, extra: Iterable[tuple] = ()
) -> ArgumentParser:
    """A jsonargparse parser whose options are the fields of the dataclasses ``groups``: a dataclass (its fields at
    the top level; fields without a default are positional) or a pair ``(section, dataclass)`` (``--section.field``).
    ``extra``: ``(flags, kwargs)`` pairs of further options (not config keys, e.g. ``-c`` or ``--print-config``).
    """
    parser = ArgumentParser(
        prog=prog, description=description, usage=usage, exit_on_error=False, allow_abbrev=False, parser_mode=_MODE
    )
    parser.lambdanet_keys = {}  # type: ignore[attr-defined]
    for flags, kwargs in extra:  # typed like a field (``"type": bool``: a bare ``--flag`` is true)
        parser.add_argument(*flags, **kwargs)
        parser.lambdanet_keys.update({f[2:]: kwargs.get("type", str) for f in flags if f.startswith("--")})  # type: ignore
    shared = {}
    for group in groups:
        key, cls = group if isinstance(group, tuple) else (None, group)
        parser.add_class_arguments(cls, nested_key=key, fail_untyped=True, instantiate=False, as_positional=True)
        parser.lambdanet_keys.update(field_types(cls, f"{key}." if key else ""))  # type: ignore[attr-defined]
        for doc in docstring_parser.parse(cls.__doc__ or "").params:
            shared.update({(f"{key}." if key else "") + n.strip(): doc.description for n in doc.arg_name.split(",")})
    for action in parser._actions:  # fields documented together (``batch, dim: shape.``) share the sentence
        action.help = action.help or shared.get(action.dest)
    plain = parser.format_help
    parser.format_help = lambda: re.sub(r":[a-z]+:`", "`", plain().replace("``", "`"))  # reST ``x``, :func:`x` -> `x`
    return parser


def normalize_argv(keys: Mapping[str, Any], argv: list[str]) -> list[str]:
    """Shell habits to jsonargparse syntax, from the field types alone.

    ``--dim-k 4`` -> ``--dim_k=4``; a bare boolean ``--compile`` -> ``--compile=true``; ``--no-compile`` ->
    ``--compile=false``; ``--sides 8 16`` (several words for a list) -> ``--sides=["8", "16"]``. One value is joined
    with ``=`` so that argparse does not read ``-1e-4`` as an option; further words are positionals.
    """
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        name, eq, value = arg[2:].partition("=")
        under = name.replace("-", "_")
        if not arg.startswith("--") or arg == "--":
            out.append(arg)
            continue
        if under not in keys and under.startswith("no_") and not eq and _kind(keys.get(under[3:])) == "bool":
            out.append(f"--{under[3:]}=false")
            continue
        name = under if under in keys else name
        words = []
        while not eq and i < len(argv) and not argv[i].startswith("--"):
            words.append(argv[i])
            i += 1
        kind = _kind(keys.get(name))
        if kind == "bool" and not eq:
            eq, value = "=", words.pop(0) if words and words[0].lower() in _BOOL_WORDS else "true"
        elif kind == "list" and words and not words[0].lstrip().startswith(("[", "(")):
            eq, value, words = "=", json.dumps(words), []
        elif words:
            eq, value = "=", words.pop(0)
        out += [f"--{name}{eq}{value}", *words]
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
        elif _kind(keys.get(key)) == "dict" and isinstance(v, Mapping) and isinstance(base.get(key), Mapping):
            data[k] = {**base.get(key), **v}  # type: ignore[index]


def parse(
    parser: ArgumentParser,
    layers: Iterable[Mapping[str, Any] | tuple[str, Mapping[str, Any]]] = (),
    argv: list[str] | None = None,
) -> Namespace:
    """Defaults <- each mapping of ``layers`` <- the command line ``argv``, type-checked, as a Namespace. A layer is
    a mapping or ``(source, mapping)``; errors in it start with ``source:`` (e.g. the recipe's path).

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
    if argv is not None:  # also reports a missing positional
        args = normalize_argv(keys, argv)
        ns = _parse_step(keys, lambda: parser.parse_args(args, namespace=ns))
    return ns


def _parse_step(keys: Mapping[str, Any], step: Any) -> Namespace:
    _refused.clear()
    try:
        return step()
    except ConfigError:
        raise
    except Exception as e:  # jsonargparse raises ArgumentError (and TypeError/ValueError from loaders)
        line = _one_line(str(e), keys)
        raise ConfigError(f"{line.split('=')[0]}: {_refused[-1]}" if _refused else line) from e


def _copy(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {k: _copy(v) for k, v in data.items()}
    return [_copy(v) for v in data] if isinstance(data, (list, tuple)) else data


_UNKNOWN = (  # jsonargparse's wordings of an unknown key
    r"unrecognized arguments: -*([^\s=]+)",
    r"Group '([^']+)' does not accept option '([^']+)'",
    r"(?:Option|Key) '([^']+)' is not (?:accepted|expected)",
)


def _one_line(message: str, keys: Mapping[str, Any]) -> str:
    """jsonargparse's (often multi-line) error as one line naming the key, the value and what was expected."""
    for pattern in _UNKNOWN:
        m = re.search(pattern, message)
        if m:
            key = ".".join(m.groups())
            close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
            close = close or [k for k in keys if k.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]][:3]  # wrong section
            hint = f"did you mean {', '.join(close)}?" if close else "--help lists the valid keys"
            return f"unknown key {key!r}; {hint}"
    m = re.search(r'Parser key "([^"]+)"', message)
    if m:
        got = re.findall(r"(?:Given|Got) value: (.*)", message)
        expected = type_name(keys[m.group(1)]) if m.group(1) in keys else "a valid value"
        return f"{m.group(1)}={got[-1].strip() if got else '?'}: expected {expected}"
    m = re.search(r"argument (\S+): expected one argument", message)
    return f"{m.group(1)} needs a value" if m else " ".join(message.split())


def command(options: type, *sections: tuple[str, type], prog: str, description: str, usage: str) -> Callable:
    """Decorator: ``body(opts, *section_argvs) -> int`` as the ``main(argv) -> int`` of the command ``prog``:
    ``argv`` parsed into the dataclass ``options`` (domains checked: :func:`check_domains`), the ``--section.*`` words
    of each ``(section, dataclass)`` of ``sections`` passed on as they are (``--help`` lists their keys); ``-h``
    prints the help (status 0); a ``ValueError`` from the parsing or from ``body`` is one line on stderr (status 2).
    """

    def wrap(body: Callable[..., int]) -> Callable[[list[str]], int]:
        def main(argv: list[str]) -> int:
            parser = config_parser(options, *sections, prog=prog, description=description, usage=usage)
            if "-h" in argv or "--help" in argv:
                parser.print_help()
                return 0
            try:
                argv = normalize_argv(parser.lambdanet_keys, argv)  # type: ignore[attr-defined]  # one word an option
                ns = parse(parser, [], argv)
                section_argvs = [[a for a in argv if a.startswith(f"--{key}.")] for key, _ in sections]
                opts = options(**{f.name: ns.get(f.name) for f in dataclasses.fields(options)})
                check_domains(opts)
                return body(opts, *section_argvs)
            except ValueError as e:
                return fail(prog, e)

        return main

    return wrap


def fail(prog: str, error: BaseException | str) -> int:
    """Print ``prog: error: <one line>`` on stderr; the exit status of a usage or configuration error (2)."""
    text = " ".join(str(error).split()) or type(error).__name__
    print(f"{prog}: error: {text}", file=sys.stderr)
    return 2
