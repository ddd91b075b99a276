"""Sphinx extension: a Python cross-reference to a name ufkit imports or re-exports links to where it is defined.

``ufkit.measure.benchmark`` is ``ufkit.measure.latency.benchmark`` re-exported by the subpackage, and a docstring of
:mod:`ufkit.nas.supernet` may write :class:`SearchSpace` for the class it imports from :mod:`ufkit.nas.space`. The
API reference (book/api.md) documents each object once, under its defining module. When a role finds no target,
this handler imports the object (by its dotted name, or by the short name in the class, the module or a package
above the module the role sits in), takes its ``__module__`` and ``__qualname__`` and resolves the role against that name. Only objects defined
in ``ufkit`` are considered; everything else stays unresolved, as without this extension.
"""

from __future__ import annotations

import importlib


def _lookup(dotted: str):
    """The object a dotted name denotes, by importing its longest importable prefix; None if there is none."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def _canonical(target: str) -> str | None:
    """``module.qualname`` of the ufkit object ``target`` names, or None."""
    obj = _lookup(target)
    if isinstance(obj, property):
        obj = obj.fget
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not module.startswith("ufkit") or not qualname or "<" in qualname:
        return None
    return f"{module}.{qualname}"


def _missing_reference(app, env, node, contnode):
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    if target.startswith("ufkit."):
        candidates = [target]
    else:  # a short name: in the role's class, its module, then the packages above (which re-export names)
        module, cls = node.get("py:module"), node.get("py:class")
        candidates = [f"{module}.{cls}.{target}"] if module and cls else []
        parts = module.split(".") if module else []
        candidates += [".".join(parts[:i] + [target]) for i in range(len(parts), 0, -1)]
    domain = env.get_domain("py")
    for candidate in candidates:
        canonical = _canonical(candidate)
        if canonical and canonical != target:
            found = domain.resolve_xref(env, node.get("refdoc", ""), app.builder, node["reftype"], canonical,
                                        node, contnode)
            if found is not None:
                return found
    return None


def setup(app):
    app.connect("missing-reference", _missing_reference)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
