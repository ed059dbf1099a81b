"""lambdanet info MODEL: one registered model in full.

Prints what the model is, where it comes from, its default input (and whether the input size is fixed), its
parameters and MACs at that input (paper convention, see lambdanet models), and every override that
create_model(MODEL, **overrides) and lambdanet train --model.overrides.KEY accept, with its type, this model's
default and what it means.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import re
import sys

__all__ = ["main", "override_table"]


def _attribute_docs(cls: type) -> dict[str, str]:
    """Field descriptions from the ``Attributes:`` section of a Google-style class docstring."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    if "Attributes:" not in doc:
        return {}
    docs: dict[str, str] = {}
    current = None
    for line in doc.split("Attributes:", 1)[1].splitlines():
        if not line.strip():
            continue
        m = re.match(r"^ {4}(\w+): (.*)$", line)
        if m:
            current = m.group(1)
            docs[current] = m.group(2).strip()
        elif line.startswith("        ") and current is not None:
            docs[current] += " " + line.strip()
        else:
            break
    return {key: _plain(text) for key, text in docs.items()}


def _plain(text: str) -> str:
    """reST markup to plain text: ``x`` -> x, :class:`~a.B` -> B."""
    text = re.sub(r":\w+:`~?(?:[\w.]+\.)?([\w]+)`", r"\1", text)
    return text.replace("``", "")


def override_table(name: str) -> list[tuple[str, str, str, str]]:
    """(override, type, default for this model, description) for every override ``name`` accepts."""
    import lambdanet
    from lambdanet.models import _registry

    cfg = lambdanet.model_info(name).config
    rows: list[tuple[str, str, str, str]] = []
    if cfg is not None and dataclasses.is_dataclass(cfg):
        docs = _attribute_docs(type(cfg))
        for f in dataclasses.fields(cfg):
            value = getattr(cfg, f.name)
            if dataclasses.is_dataclass(value):  # nested lambda-layer settings: their keys are top-level overrides
                sub_docs = _attribute_docs(type(value))
                for g in dataclasses.fields(value):
                    rows.append((g.name, str(g.type), repr(getattr(value, g.name)), sub_docs.get(g.name, "")))
                continue
            rows.append((f.name, str(f.type), repr(value), docs.get(f.name, "")))
        return rows
    builder = _registry._MODELS[name]
    for p in inspect.signature(builder).parameters.values():
        if p.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
            continue
        annotation = "" if p.annotation is inspect.Parameter.empty else str(p.annotation)
        default = "(required)" if p.default is inspect.Parameter.empty else repr(p.default)
        rows.append((p.name, annotation, default, ""))
    return rows


def _wrap(text: str, width: int, indent: int) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        lines.append(line)
    return [lines[0], *(" " * indent + rest for rest in lines[1:])] if lines else [""]


def main(argv: list[str] | None = None) -> int:
    """Print one model's card; returns the exit status (2 for an unknown model)."""
    parser = argparse.ArgumentParser(
        prog="lambdanet info", description=__doc__.split("\n", 1)[1].strip().replace("``", "`")
    )
    parser.add_argument("model", help="registered model name (lambdanet models lists them)")
    args = parser.parse_args(argv)

    import lambdanet
    from lambdanet.cli.models import model_rows
    from lambdanet.models import _registry

    try:
        info = lambdanet.model_info(args.model)
    except ValueError as e:
        close = difflib.get_close_matches(args.model, lambdanet.list_models(), n=3)
        hint = f" Did you mean {' or '.join(close)}?" if close and "Similar" not in str(e) else ""
        print(f"lambdanet info: {e}{hint}".replace("lambdanet.list_models()", "lambdanet models"), file=sys.stderr)
        return 2
    builder = _registry._MODELS[args.model]
    summary = inspect.cleandoc(builder.__doc__ or "").split("\n\n")[0].replace("\n", " ")
    (row,) = list(model_rows(args.model))
    size = row["input_size"]
    fixed = "fixed: global position lambdas" if row["fixed_input_size"] else "other sizes work too"
    print(f"{args.model}: {summary}")
    print(f"  source:         {info.paper_ref}")
    print(f"  default input:  {size} ({fixed})")
    if info.extra.get("task") != "language_model":
        print(f"  classes:        {info.num_classes}")
    print(f"  size:           {row['params_m']:.3f} M params, {row['gmacs']:.3f} GMACs at {size}")
    published = info.extra.get("published_params_m")
    if published is not None:
        print(f"  published:      {published} M params (docs/reproduction.md compares)")
    rows = override_table(args.model)
    print()
    if not rows:
        print(f"overrides: see the builder's documentation (help({builder.__module__}.{args.model}))")
    else:
        print("overrides (create_model(name, KEY=VALUE) or lambdanet train --model.overrides.KEY VALUE):")
        w_name = max(len(r[0]) for r in rows)
        w_type = max(len(r[1]) for r in rows)
        w_def = min(max(len(r[2]) for r in rows), 24)
        indent = 2 + w_name + 2 + w_type + 2 + w_def + 2
        for key, typ, default, doc in rows:
            text = "\n".join(_wrap(doc, max(40, 118 - indent), indent))
            print(f"  {key:<{w_name}}  {typ:<{w_type}}  {default:<{w_def}}  {text}".rstrip())
    print("  checkpoint: load weights from a file (create_model only; see docs/interop.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
