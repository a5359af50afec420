"""`textclf plots`: the pipeline's plots as PNG files, and a `dvc plots show` page for offline use.

The pictures are drawn from exactly what `dvc plots show` draws: ``dvc plots show --json`` returns,
per plot, the Vega-Lite spec DVC fills from the plot files with the templates dvc.yaml declares,
and vl-convert (Vega in an embedded JavaScript runtime, no browser) renders each one to PNG. Only
the size changes: each picture gets a fixed size (``view_size``), so its pixel size is known in
advance; a matrix (both axes categorical, e.g. the confusion template) is square, anything else a
wide curve box. DVC facets some templates by revision; ``plots show`` has one revision, so that
facet is a single cell and is unwrapped, which is what lets Vega fit the whole picture to the size.

DVC's own HTML page (``dvc plots show``) loads Vega from a CDN and is blank offline. The repository
configures ``plots.html_template`` (``.dvc/config``) to point at ``.dvc/plots/offline.html``: the
same page with vl-convert's bundle of the libraries it draws the PNGs with inlined instead.
``offline_template`` makes it (``textclf plots --write-template``, after upgrading vl-convert).

DVC runs as a subprocess (``python -m dvc``, the same environment as this package), as for
`textclf report`: the pictures are what a user gets from the dvc command.
"""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from collections.abc import Iterable
from importlib.metadata import version
from pathlib import Path, PurePosixPath
from typing import Any

from textclf.core.atomic import atomic_path, write_text
from textclf.core.errors import TextclfError
from textclf.tools import dvc

DEFAULT_OUT = Path("docs/plots")
TEMPLATE = Path(".dvc/plots/offline.html")  # `plots.html_template = plots/offline.html`
CURVE_SIZE = (560, 360)  # CSS pixels of a whole picture (axes, title and legend included)
SQUARE_SIZE = (420, 420)
SCALE = 2  # PNG pixels per CSS pixel: sharp on high-density screens and in zoomed-in reviews
VEGALITE_MAJOR = 5  # DVC's templates declare vega-lite v5 in their $schema
REV = "rev"  # the field DVC adds to every data row: the revision it came from

_DATA_SUFFIXES = {".json", ".csv", ".tsv", ".yaml", ".yml"}
_COMPOSITE = ("facet", "concat", "hconcat", "vconcat", "repeat", "spec")
_PLACEHOLDERS = ("{scripts}", "{plot_divs}", "{refresh_tag}")
# The bundle's snippet: the one global DVC's plot divs call, `vegaEmbed('#id', spec)`.
_EXPOSE = "window.vegaEmbed = vegaEmbed;\n"
# DVC fills {refresh_tag} and {plot_divs}. There is deliberately no {scripts}: that is where DVC
# puts its CDN <script> tags. The bundle runs inside a function so its top-level names (it is
# written as a module) cannot clash with the `var spec` each plot div declares.
_PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>DVC Plot</title>
    <!-- Vega, Vega-Lite and vega-embed, inlined so that this page draws with no network
         (DVC's default page loads them from a CDN): {versions}.
         Regenerate: `textclf plots --write-template`. -->
    <script>
(function () {
"use strict";
{bundle}
})();
    </script>
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def run(out: Path | None = None, root: Path | None = None) -> list[Path]:
    """Write one PNG per plot with data in the DVC project at ``root`` into ``out``.

    ``out`` defaults to ``docs/plots`` under ``root``. Each file is named after its plot id
    (``slugs``) and written atomically; returns their paths, sorted by plot id. Raises
    ``TextclfError`` when no plot has data or dvc fails.
    """
    root = Path.cwd() if root is None else Path(root).resolve()  # named in errors: not "."
    out = root / DEFAULT_OUT if out is None else Path(out)
    specs = load_specs(root)
    names = slugs(specs)
    written = []
    for plot_id, spec in specs.items():
        target = out / f"{names[plot_id]}.png"
        png = render(spec, plot_id)
        with atomic_path(target) as tmp:
            tmp.write_bytes(png)
        written.append(target)
    return written


def load_specs(root: Path) -> dict[str, dict[str, Any]]:
    """``{plot id: filled Vega-Lite spec}`` for every vega plot with data, from
    ``dvc plots show --json``, sorted by plot id."""
    root = Path(root).resolve()
    raw = dvc(root, "plots", "show", "--json")
    try:
        payload = json.loads(raw or "{}")
    except json.JSONDecodeError as exc:
        raise TextclfError(f"`dvc plots show --json` in {root} printed no JSON ({exc}): "
                           f"{raw[:500]!r}") from exc
    # A declared plot whose file does not exist is normal (a task writes only the plots that apply
    # to it); a file that exists and cannot be read is a broken output, and is reported.
    broken = [e for e in payload.get("errors", []) if e.get("type") != "FileNotFoundError"]
    if broken:
        lines = "\n".join(f"  {e.get('source') or e.get('name')}: {e.get('type')}: {e.get('msg')}"
                          for e in broken)
        raise TextclfError(f"`dvc plots show` in {root} could not read some plot data:\n{lines}\n"
                           "Fix or regenerate those files (`dvc repro`), then run it again.")
    declared = sorted(payload.get("data", {}))
    specs = {plot_id: entry["content"]
             for plot_id in declared for entry in payload["data"][plot_id]
             if entry.get("type") == "vega" and entry.get("content")}
    if not specs:
        if not any((folder / ".dvc").is_dir() for folder in (root, *root.parents)):
            # dvc prints an empty result outside a project, not an error
            raise TextclfError(f"{root} is not in a DVC project (no .dvc folder here or above): "
                               "pass the project's folder with --root, or run from it.")
        what = (f"declares {len(declared)} plot(s) ({', '.join(declared)}) but none of their "
                "files exist" if declared else "declares no plots")
        raise TextclfError(f"no plot to draw: dvc.yaml in {root} {what}. Run `dvc repro` (or "
                           "`dvc pull`) first to make the plot files, then `textclf plots`.")
    return specs


def render(spec: dict[str, Any], plot_id: str = "plot") -> bytes:
    """The PNG of one filled DVC spec, ``expected_png_size(spec)`` pixels when that is not None."""
    import vl_convert

    try:
        # No URL is allowed: DVC inlines the data, so the picture never depends on the network.
        return vl_convert.vegalite_to_png(prepare(spec), vl_version=_vl_version(spec),
                                          scale=SCALE, allowed_base_urls=[])
    except ValueError as exc:
        raise TextclfError(f"vl-convert could not draw plot {plot_id!r}:\n{exc}") from exc


def prepare(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with a fixed size a headless renderer can honour (a copy).

    A facet by revision over one revision is unwrapped; checkboxes are ticked; ``"container"``
    sizes (which mean the width of the browser element) become numbers; a single or layered
    view is then fitted, title, axes and legend included, to ``view_size``. Any other composite
    keeps Vega's own layout.
    """
    spec = _unfacet(copy.deepcopy(spec))
    # A picture has no controls: switch on what a checkbox would show (the confusion
    # template's counts in each cell).
    for param in spec.get("params", []):
        bind = param.get("bind") if isinstance(param, dict) else None
        if isinstance(bind, dict) and bind.get("input") == "checkbox":
            param["value"] = True
    size = view_size(spec)
    _replace_container(spec, size or CURVE_SIZE)
    if size is not None:
        for layer in _layers(spec):  # the layered view's size is set once, at the top
            layer.pop("width", None)
            layer.pop("height", None)
        spec["width"], spec["height"] = size
        spec["autosize"] = {"type": "fit", "contains": "padding"}
    return spec


def view_size(spec: dict[str, Any]) -> tuple[int, int] | None:
    """The CSS-pixel size a spec's picture is drawn at: ``SQUARE_SIZE`` when both axes are
    categorical, ``CURVE_SIZE`` otherwise; None for a composite Vega cannot fit to a size."""
    spec = _unfacet(spec)
    encodings = [spec.get("encoding") or {}, *(layer.get("encoding") or {}
                                                for layer in _layers(spec))]
    # DVC's templates leave unused facet channels as {} (e.g. bar_horizontal's "column"): only one
    # with a field makes a grid of views.
    if any(key in spec for key in _COMPOSITE) or any(
            (enc.get(channel) or {}).get("field") for enc in encodings
            for channel in ("facet", "row", "column")):
        return None
    x = next((enc["x"] for enc in encodings if isinstance(enc.get("x"), dict)), {})
    y = next((enc["y"] for enc in encodings if isinstance(enc.get("y"), dict)), {})
    discrete = {"nominal", "ordinal"}
    return SQUARE_SIZE if x.get("type") in discrete and y.get("type") in discrete else CURVE_SIZE


def expected_png_size(spec: dict[str, Any]) -> tuple[int, int] | None:
    """(width, height) in pixels of ``render(spec)``; None when ``view_size`` is None."""
    size = view_size(spec)
    return None if size is None else (size[0] * SCALE, size[1] * SCALE)


def slugs(plot_ids: Iterable[str]) -> dict[str, str]:
    """A distinct file-name stem per plot id: the file name without its suffix
    (``metrics/eval/plots/sklearn/confusion_matrix.json`` -> ``confusion_matrix``), or the name
    (``Loss`` -> ``loss``); ids that would clash take parent folders until they differ
    (``train_loss``, ``val_loss``), then a number."""
    parts = {plot_id: _parts(plot_id) for plot_id in sorted(plot_ids)}
    taken: dict[str, str] = {}
    pending, depth = list(parts), 1
    while pending:
        candidates = {plot_id: _slug(parts[plot_id][-depth:]) for plot_id in pending}
        counts = Counter(candidates.values())
        unresolved = []
        for plot_id in pending:
            slug = candidates[plot_id]
            clash = counts[slug] > 1 or slug in taken.values()
            if clash and depth < len(parts[plot_id]):
                unresolved.append(plot_id)
                continue
            number = 1
            while slug in taken.values():
                number += 1
                slug = f"{candidates[plot_id]}_{number}"
            taken[plot_id] = slug
        pending, depth = unresolved, depth + 1
    return taken


def offline_template() -> str:
    """The HTML page for ``plots.html_template``: DVC's page with vl-convert's Vega, Vega-Lite
    and vega-embed bundle inlined instead of CDN script tags."""
    import vl_convert

    vl_version = _vl_version({})
    bundle = vl_convert.javascript_bundle(_EXPOSE, vl_version=vl_version)
    # DVC fills the page by plain text replacement, and an HTML parser ends the script at the
    # first "</script": either in the bundle would break the page, so refuse rather than ship it.
    bad = [text for text in (*_PLACEHOLDERS, "</script") if text in bundle.lower()]
    if bad:
        raise TextclfError(f"vl-convert {version('vl-convert-python')}'s JavaScript bundle "
                           f"contains {', '.join(bad)}, which would break the page DVC fills; "
                           "the offline template needs escaping for it before an upgrade.")
    versions = (f"Vega {vl_convert.get_vega_version()}, Vega-Lite {vl_version}, vega-embed "
                f"{vl_convert.get_vega_embed_version()} from vl-convert-python "
                f"{version('vl-convert-python')}")
    return (_PAGE.replace("{versions}", versions)  # not str.format: the page is full of braces
            .replace("{bundle}", bundle))


def write_template(root: Path | None = None) -> Path:
    """Write ``offline_template()`` to ``.dvc/plots/offline.html`` under ``root``; its path."""
    target = (Path.cwd() if root is None else Path(root)) / TEMPLATE
    write_text(target, offline_template())
    return target


def _unfacet(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` without a facet by revision when its data holds at most one revision."""
    facet = spec.get("facet")
    if not isinstance(facet, dict) or not isinstance(spec.get("spec"), dict):
        return spec
    channels = [facet] if "field" in facet else [v for v in facet.values() if isinstance(v, dict)]
    if any(channel.get("field", REV) != REV for channel in channels):
        return spec
    values = (spec.get("data") or {}).get("values") or []
    if len({row.get(REV) for row in values if isinstance(row, dict)}) > 1:
        return spec
    inner = spec["spec"]
    flat = {key: value for key, value in spec.items() if key not in ("facet", "spec")}
    for key, value in inner.items():
        if key in ("params", "transform") and key in flat:  # the outer ones apply first
            flat[key] = [*flat[key], *value]
        else:
            flat[key] = value
    return flat


def _layers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every view nested in ``spec``'s layers, depth first."""
    found = []
    for layer in spec.get("layer") or []:
        if isinstance(layer, dict):
            found += [layer, *_layers(layer)]
    return found


def _replace_container(node: Any, size: tuple[int, int]) -> None:
    if isinstance(node, dict):
        for key, dim in (("width", 0), ("height", 1)):
            if node.get(key) == "container":
                node[key] = size[dim]
        for value in node.values():
            _replace_container(value, size)
    elif isinstance(node, list):
        for value in node:
            _replace_container(value, size)


def _parts(plot_id: str) -> list[str]:
    path = PurePosixPath(plot_id)
    if path.suffix.lower() in _DATA_SUFFIXES:
        path = path.with_suffix("")
    return [part for part in path.parts if part not in ("/", ".", "..")] or ["plot"]


def _slug(parts: list[str]) -> str:
    return re.sub(r"[^a-z0-9]+", "_", "_".join(parts).lower()).strip("_") or "plot"


def _vl_version(spec: dict[str, Any]) -> str | None:
    """The newest Vega-Lite vl-convert has with the major version the spec's $schema names
    (DVC's: v5): a newer major may drop syntax its templates use."""
    import vl_convert

    match = re.search(r"/v(\d+)(?:\.[\d.]*)?\.json$", str(spec.get("$schema", "")))
    major = int(match.group(1)) if match else VEGALITE_MAJOR
    same = [v for v in vl_convert.get_vegalite_versions() if v.split(".")[0] == str(major)]
    return max(same, key=lambda v: tuple(int(n) for n in v.split("."))) if same else None
