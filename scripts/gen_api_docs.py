"""Generates docs/api.md, the API reference, from the docstrings of ``accel_jax.__all__``.

    python scripts/gen_api_docs.py           # writes docs/api.md
    python scripts/gen_api_docs.py --check   # exits 1 if docs/api.md is out of date

One section per defining module (its docstring first, then each public name in
the order of the source), so a new export lands in the right place when the
script is re-run. The docstrings are reStructuredText-flavoured; they are turned
into Markdown here: ``code``, :func:`links`, ``::`` literal blocks and doctests
as fenced code, simple ``====`` tables as Markdown tables.

Names without a docstring of their own are documented by :data:`HAND_WRITTEN`
(optax's protocol types, re-exported) or, for module-level constants, by a ``#:``
comment above the assignment in the source (Sphinx's convention).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import pathlib
import re
import sys
import types

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "api.md"

# Sections in reading order; modules not listed here follow, sorted by name.
MODULE_ORDER = [
    "accel_jax.optimizers.sgd",
    "accel_jax.optimizers.adagrad",
    "accel_jax.optimizers.rmsprop",
    "accel_jax.optimizers.adam",
    "accel_jax.optimizers._conventions",
    "accel_jax.base",
    "accel_jax.combine",
    "accel_jax.transforms.momentum",
    "accel_jax.transforms.adaptive",
    "accel_jax.transforms.adam",
    "accel_jax.transforms.scaling",
    "accel_jax.schedules",
    "accel_jax.schedules_cyclic",
    "accel_jax.transforms.plateau",
    "accel_jax.lr_finder",
    "accel_jax.transforms.regularization",
    "accel_jax.transforms.clipping",
    "accel_jax.transforms.guards",
    "accel_jax.transforms.accumulation",
    "accel_jax.transforms.averaging",
    "accel_jax.hyperparams",
]

PROTOCOL = "protocol"  # the section of the re-exported optax types

# The protocol types are optax's own (accel_jax re-exports them): documented here.
HAND_WRITTEN = {
    "GradientTransformation": (
        "optax's `GradientTransformation`: the pair of pure functions "
        "`init(params) -> state` and `update(updates, state, params=None) -> (updates, state)`. "
        "Every accel_jax transformation is one, so it works wherever optax's do."
    ),
    "GradientTransformationExtraArgs": (
        "optax's `GradientTransformationExtraArgs`: a `GradientTransformation` whose "
        "`update` also takes keyword arguments (`value=loss` for `reduce_on_plateau`, "
        "say). `chain` forwards them to the elements that accept them."
    ),
    "Schedule": "optax's `Schedule`: a function `step -> value` (a learning rate, a momentum).",
    "Params": "optax's `Params`: a pytree of arrays, the model's parameters.",
    "Updates": "optax's `Updates`: a pytree shaped like the params (gradients, or updates).",
    "OptState": "optax's `OptState`: the state of a transformation, a pytree of arrays.",
    "EmptyState": "optax's `EmptyState`: the state of a stateless transformation (no arrays).",
}


def _public_names(module) -> list[str]:
    return [n for n in module.__all__ if not isinstance(getattr(module, n), types.ModuleType)]


def _submodules() -> list[types.ModuleType]:
    return [m for name, m in sorted(sys.modules.items()) if name.startswith("accel_jax.") and m]


def _constant_comment(name: str) -> tuple[str, str] | None:
    """``(module name, text)`` of the ``#:`` comment above ``NAME = ...`` in a submodule."""
    for module in _submodules():
        try:
            source = inspect.getsource(module)
        except (OSError, TypeError):
            continue
        for node in ast.parse(source).body:
            targets = getattr(node, "targets", None) or [getattr(node, "target", None)]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                lines = source.splitlines()[: node.lineno - 1]
                comment = []
                while lines and lines[-1].lstrip().startswith("#:"):
                    comment.insert(0, lines.pop().lstrip()[2:].strip())
                return module.__name__, " ".join(comment)
    return None


def _own_doc(name: str, obj) -> str:
    """The object's own docstring ('' if it only has an inherited or generated one)."""
    if not isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType)):
        return ""
    doc = obj.__doc__ or ""
    if isinstance(obj, type) and doc.startswith(f"{obj.__name__}("):
        return ""  # NamedTuple / dataclass placeholder docstring
    return inspect.cleandoc(doc)


def describe(name: str, obj) -> tuple[str, str]:
    """``(section, documentation)`` of a public name; the documentation may be ''."""
    module = getattr(obj, "__module__", None) or ""
    if name in HAND_WRITTEN:
        return PROTOCOL, HAND_WRITTEN[name]
    if module.startswith("accel_jax") and isinstance(obj, (type, types.FunctionType)):
        return module, _own_doc(name, obj)
    found = _constant_comment(name)
    if found:
        return found
    return module or "accel_jax", _own_doc(name, obj)


# ----------------------------------------------------------------------- rendering


def _inline(text: str, names: set[str]) -> str:
    def role(m):
        target = m.group(2).lstrip("~")
        short = target.split(".")[-1]
        if target.startswith("accel_jax.") or short == target:
            return f"[`{short}`](#{short.lower()})" if short in names else f"`{short}`"
        return f"`{target}`"

    text = re.sub(r":(func|class|data|meth|attr|mod):`([^`]+)`", role, text)
    return re.sub(r"``([^`]+)``", r"`\1`", text)


_BORDER = re.compile(r"^\s*=+(\s+=+)+\s*$")


def _table(lines: list[str], names: set[str]) -> list[str]:
    """An RST simple table (three ``====`` borders) as a Markdown table."""
    border = lines[0]
    starts = [m.start() for m in re.finditer(r"=+", border)]
    ends = starts[1:] + [None]

    def cells(line):
        return [_inline(line[a:b].strip(), names) for a, b in zip(starts, ends, strict=True)]

    rows = [cells(line) for line in lines if not _BORDER.match(line) and line.strip()]
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(starts)]
    return out + ["| " + " | ".join(r) + " |" for r in rows[1:]]


def to_markdown(doc: str, names: set[str]) -> str:
    """reStructuredText-flavoured docstring -> Markdown."""
    lines = doc.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if _BORDER.match(line):  # simple table: up to the third border
            j, borders = i, 0
            while j < len(lines) and borders < 3:
                borders += bool(_BORDER.match(lines[j]))
                j += 1
            block = [ln.strip() and ln[len(line) - len(line.lstrip()):] for ln in lines[i:j]]
            out += _table(block, names)
            i = j
            continue
        if line.lstrip().startswith(">>>"):  # doctest: up to a blank line
            j = i
            while j < len(lines) and lines[j].strip():
                j += 1
            indent = len(line) - len(line.lstrip())
            out += ["```python", *(ln[indent:] for ln in lines[i:j]), "```"]
            i = j
            continue
        if line.rstrip().endswith("::"):  # literal block: the indented lines that follow
            head = line.rstrip()[:-2].rstrip()
            if head:
                out.append(_inline(head, names) + ":")
            base = len(line) - len(line.lstrip())
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            block_start = j
            while j < len(lines) and (
                not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > base
            ):
                j += 1
            block = lines[block_start:j]
            while block and not block[-1].strip():
                block.pop()
            if block:
                indent = min(len(b) - len(b.lstrip()) for b in block if b.strip())
                out += ["", "```text", *(b[indent:] for b in block), "```", ""]
            i = j
            continue
        out.append(_inline(line, names))
        i += 1
    text = "\n".join(out)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


class _Raw:
    """An annotation written as it is in the source (string annotations, unquoted)."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _signature(name: str, obj) -> str | None:
    if not callable(obj):
        return None
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    unquote = lambda a: _Raw(a) if isinstance(a, str) else a
    sig = sig.replace(
        parameters=[p.replace(annotation=unquote(p.annotation)) for p in sig.parameters.values()],
        return_annotation=unquote(sig.return_annotation),
    )
    sig = str(sig)
    sig = re.sub(r" at 0x[0-9a-f]+", "", sig)  # function defaults: no addresses
    sig = re.sub(r"<class '([\w.]+)'>", r"\1", sig)
    one_line = f"{name}{sig}"
    if len(one_line) <= 88:
        return one_line
    # One parameter a line.
    params = []
    depth, current = 0, ""
    inner, _, ret = sig[1:].rpartition(")")
    for ch in inner:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            params.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        params.append(current.strip())
    return f"{name}(\n" + "".join(f"    {p},\n" for p in params) + f"){ret}"


def _source_line(name: str, obj) -> int:
    if name in HAND_WRITTEN:
        return list(HAND_WRITTEN).index(name)
    try:
        return inspect.getsourcelines(obj)[1]
    except (OSError, TypeError):
        return 10**9


def _section_title(module_name: str) -> tuple[str, str]:
    if module_name == PROTOCOL:
        return "Protocol types (from optax)", (
            "accel_jax uses optax's protocol types as its own and re-exports them, so "
            "every accel_jax transformation is an optax transformation and the other "
            "way round: it goes into `optax.chain`, `flax.training.train_state.TrainState`, "
            "`nnx.Optimizer` or `optax.MultiSteps` unchanged."
        )
    module = sys.modules[module_name]
    doc = inspect.cleandoc(module.__doc__ or "")
    first, _, rest = doc.partition("\n")
    return _inline(first.rstrip("."), set()), rest.strip()


def generate() -> str:
    import accel_jax

    names = _public_names(accel_jax)
    linkable = set(names)
    sections: dict[str, list[tuple[int, str, object, str]]] = {}
    for name in names:
        obj = getattr(accel_jax, name)
        section, doc = describe(name, obj)
        sections.setdefault(section, []).append((_source_line(name, obj), name, obj, doc))
    order = [PROTOCOL] + [m for m in MODULE_ORDER if m in sections]
    order += sorted(m for m in sections if m not in order)

    out = [
        "# API reference",
        "",
        "<!-- Generated by scripts/gen_api_docs.py from the docstrings: do not edit by hand. -->",
        "",
        "Everything below is importable from the top-level package (`import accel_jax as aj`).",
        "Formulas use `g` for the incoming update (the gradient), `eta_t` for the learning",
        "rate at step `t`, `w` for the parameters. The conventions of optax, torch.optim",
        "and Keras are compared in [conformance.md](conformance.md); the names across",
        "frameworks are in [name_map.md](name_map.md).",
        "",
        "## Contents",
        "",
    ]
    for module_name in order:
        title, _ = _section_title(module_name)
        entries = sorted(sections[module_name], key=lambda e: (e[0], e[1]))
        anchors = ", ".join(f"[`{n}`](#{n.lower()})" for _, n, _, _ in entries)
        out.append(f"- **{title}**: {anchors}")
    for module_name in order:
        title, intro = _section_title(module_name)
        where = "" if module_name == PROTOCOL else f" (`{module_name}`)"
        out += ["", f"## {title}{where}", ""]
        if intro:
            out += [to_markdown(intro, linkable), ""]
        for _, name, obj, doc in sorted(sections[module_name], key=lambda e: (e[0], e[1])):
            out += [f"### `{name}`", ""]
            sig = None if module_name == PROTOCOL else _signature(name, obj)
            if sig:
                out += ["```python", sig, "```", ""]
            elif not callable(obj):
                out += ["```python", f"{name} = {obj!r}", "```", ""]
            out += [to_markdown(doc, linkable) if doc else "*(undocumented)*", ""]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if docs/api.md is out of date")
    args = p.parse_args(argv)
    text = generate()
    if args.check:
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is out of date: run python scripts/gen_api_docs.py")
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
