"""A tiny document model rendered twice: Markdown (figures linked) and self-contained HTML (figures inlined)."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd


@dataclass
class Block:
    kind: str  # h, p, list, table, figure
    text: str = ""
    level: int = 2
    items: list[str] = field(default_factory=list)
    table: pd.DataFrame | None = None
    highlight: pd.DataFrame | None = None  # same shape as table: True = best cell
    csv: str | None = None  # relative path of the CSV behind a table
    path: str | None = None  # figure: relative path of the PNG
    anchor: str | None = None
    css: str = ""


class Document:
    def __init__(self, title: str):
        self.title = title
        self.blocks: list[Block] = []

    def h(self, level: int, text: str, anchor: str | None = None) -> None:
        self.blocks.append(Block("h", text, level=level, anchor=anchor or slug(text)))

    def p(self, text: str, css: str = "") -> None:
        self.blocks.append(Block("p", text, css=css))

    def bullets(self, items: list[str], css: str = "") -> None:
        if items:
            self.blocks.append(Block("list", items=list(items), css=css))

    def table(
        self, df: pd.DataFrame, *, highlight: pd.DataFrame | None = None, csv: str | None = None, caption: str = ""
    ) -> None:
        self.blocks.append(Block("table", caption, table=df, highlight=highlight, csv=csv))

    def figure(self, path: str, caption: str) -> None:
        self.blocks.append(Block("figure", caption, path=path))


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", re.sub(r"[`*]", "", text.lower())).strip("-")


# ------------------------------------------------------------------------------------------------
# Markdown


def _md_cell(v: Any, best: bool = False) -> str:
    s = "" if v is None or (isinstance(v, float) and pd.isna(v)) else str(v)
    s = s.replace("|", "\\|").replace("\n", " ")
    return f"**{s}**" if best and s else s


def to_markdown(doc: Document) -> str:
    out = [f"# {doc.title}", ""]
    for b in doc.blocks:
        if b.kind == "h":
            out += [f"{'#' * b.level} {b.text}", ""]
        elif b.kind == "p":
            out += [b.text, ""]
        elif b.kind == "list":
            out += [f"- {i}" for i in b.items] + [""]
        elif b.kind == "table":
            df = b.table
            if b.text:
                out += [f"*{b.text}*", ""]
            cols = [str(c) for c in df.columns]
            out.append("| " + " | ".join(_md_cell(c) for c in cols) + " |")
            out.append("|" + "|".join("---" for _ in cols) + "|")
            for i in range(len(df)):
                hl = b.highlight.iloc[i] if b.highlight is not None else None
                out.append(
                    "| "
                    + " | ".join(
                        _md_cell(df.iat[i, j], bool(hl.iat[j]) if hl is not None else False) for j in range(len(cols))
                    )
                    + " |"
                )
            if b.csv:
                out += ["", f"Data: [`{b.csv}`]({b.csv})"]
            out.append("")
        elif b.kind == "figure":
            out += [f"![{b.text}]({b.path})", "", f"*{b.text}*", ""]
    return "\n".join(out).rstrip() + "\n"


# ------------------------------------------------------------------------------------------------
# HTML


def inline_html(text: str) -> str:
    """The Markdown subset used in this report: `code`, **bold**, *italic*, [text](url)."""
    links: list[tuple[str, str]] = []

    def stash(m):
        links.append((m[1], m[2]))
        return f"\x00{len(links) - 1}\x00"

    text = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", stash, text)
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) >= 2:
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
            continue
        s = html.escape(part, quote=False)
        s = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)
        s = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<em>\1</em>", s)
        out.append(s)
    return re.sub(
        "\x00(\\d+)\x00",
        lambda m: f'<a href="{html.escape(links[int(m[1])][1])}">{inline_html(links[int(m[1])][0])}</a>',
        "".join(out),
    )


# a backslash at a line's end continues that CSS line (no newline in the string there)
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;max-width:1280px;\
margin:2em auto;padding:0 1.5em;color:#1d1d1f;line-height:1.45}
h1{border-bottom:2px solid #333;padding-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.15em;margin-top:2em}
code{background:#f3f3f3;padding:0 .25em;border-radius:3px;font-size:.92em}
table{border-collapse:collapse;margin:.6em 0 .3em;font-size:.86em}
th,td{border:1px solid #d0d0d0;padding:.25em .55em;text-align:left;vertical-align:top}
th{background:#f0f2f5}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.best{background:#dff3df;font-weight:600}
.tablewrap{overflow-x:auto}.caption{font-style:italic;color:#444;margin:.2em 0}.csv{font-size:.85em;color:#555}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #e2e2e2}\
figcaption{font-style:italic;color:#444;font-size:.9em}
ul.issues li{margin:.15em 0}.warning{color:#8a4b00}.toc{font-size:.92em}
"""

IMAGE_CHECK = """
<script>
(function () {
  function check() {
    var imgs = Array.prototype.slice.call(document.images);
    var ok = 0;
    imgs.forEach(function (img) {
      var loaded = img.complete && img.naturalWidth > 0;
      img.dataset.loaded = loaded ? "true" : "false";
      if (loaded) ok += 1;
    });
    document.body.dataset.imagesTotal = String(imgs.length);
    document.body.dataset.imagesOk = String(ok);
    document.body.dataset.imagesLoaded = (ok === imgs.length) ? "true" : "false";
  }
  if (document.readyState === "complete") { check(); } else { window.addEventListener("load", check); }
})();
</script>
"""

NUMERIC = re.compile(r"^[\s+\-−]?[\d.,]+(e[+-]?\d+)?\s*(%|[kMGTP]|pts)?(\s*\[[^\]]*\])?$|^[+\-−]?\d")


def _cell_html(v: Any, best: bool) -> str:
    s = "" if v is None or (isinstance(v, float) and pd.isna(v)) else str(v)
    classes = []
    if NUMERIC.match(s):
        classes.append("num")
    if best and s:
        classes.append("best")
    cls = f' class="{" ".join(classes)}"' if classes else ""
    return f"<td{cls}>{inline_html(s)}</td>"


def to_html(doc: Document, root: Path, generated: str = "") -> str:
    body = [f"<h1>{inline_html(doc.title)}</h1>"]
    heads = [b for b in doc.blocks if b.kind == "h" and b.level == 2]
    if heads:
        body.append(
            '<nav class="toc"><strong>Contents:</strong> '
            + " · ".join(f'<a href="#{b.anchor}">{inline_html(b.text)}</a>' for b in heads)
            + "</nav>"
        )
    for b in doc.blocks:
        if b.kind == "h":
            body.append(f'<h{b.level} id="{b.anchor}">{inline_html(b.text)}</h{b.level}>')
        elif b.kind == "p":
            cls = f' class="{b.css}"' if b.css else ""
            body.append(f"<p{cls}>{inline_html(b.text)}</p>")
        elif b.kind == "list":
            cls = f' class="{b.css}"' if b.css else ""
            body.append(f"<ul{cls}>" + "".join(f"<li>{inline_html(i)}</li>" for i in b.items) + "</ul>")
        elif b.kind == "table":
            df = b.table
            parts = []
            if b.text:
                parts.append(f'<p class="caption">{inline_html(b.text)}</p>')
            head = "".join(f"<th>{inline_html(str(c))}</th>" for c in df.columns)
            rows = []
            for i in range(len(df)):
                hl = b.highlight.iloc[i] if b.highlight is not None else None
                rows.append(
                    "<tr>"
                    + "".join(
                        _cell_html(df.iat[i, j], bool(hl.iat[j]) if hl is not None else False)
                        for j in range(df.shape[1])
                    )
                    + "</tr>"
                )
            parts.append(
                '<div class="tablewrap">'
                f'<table data-csv="{html.escape(b.csv or "")}"><thead><tr>{head}</tr></thead>'
                f"<tbody>{''.join(rows)}</tbody></table></div>"
            )
            if b.csv:
                parts.append(
                    f'<div class="csv">Data: <a href="{html.escape(b.csv)}"><code>{html.escape(b.csv)}</code></a></div>'
                )
            body.append("\n".join(parts))
        elif b.kind == "figure":
            data = base64.b64encode((root / b.path).read_bytes()).decode("ascii")
            body.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(b.text)}" '
                f'data-file="{html.escape(b.path)}"><figcaption>{inline_html(b.text)}</figcaption></figure>'
            )
    if generated:
        body.append(f'<p class="csv">{inline_html(generated)}</p>')
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(doc.title)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + IMAGE_CHECK
        + "</body></html>\n"
    )
