"""A small document model rendered both as Markdown and as a self-contained HTML page (the report's two
formats come from one source, so they cannot disagree). The HTML carries its images inline, so it renders
wherever it is opened alone: MLflow's artifact viewer, a mail attachment, a copied file."""

from __future__ import annotations

import base64
import html
import mimetypes
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Doc:
    title: str
    blocks: list[tuple[str, object]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", (level, text)))

    def para(self, text: str) -> None:
        self.blocks.append(("para", text))

    def table(self, header: list[str], rows: list[list[object]]) -> None:
        self.blocks.append(("table", (header, [[str(c) for c in r] for r in rows])))

    def image(self, path: str, alt: str) -> None:
        self.blocks.append(("image", (path, alt)))

    def quote(self, label: str, text: str) -> None:
        """A labelled verbatim text (a prompt, a model's answer)."""
        self.blocks.append(("quote", (label, text)))

    def code(self, text: str) -> None:
        self.blocks.append(("code", text))

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, value in self.blocks:
            if kind == "heading":
                out += [f"{'#' * value[0]} {value[1]}", ""]
            elif kind == "para":
                out += [value, ""]
            elif kind == "table":
                header, rows = value
                cell = lambda c: c.replace("|", "\\|").replace("\n", " ")  # noqa: E731
                out += ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
                out += ["| " + " | ".join(map(cell, r)) + " |" for r in rows] + [""]
            elif kind == "image":
                out += [f"![{value[1]}]({value[0]})", ""]
            elif kind == "quote":
                label, text = value
                out += [f"**{label}**", ""] + [f"> {line}" if line else ">" for line in (text or "(empty)").split("\n")]
                out += [""]
            elif kind == "code":
                out += ["```yaml", value.rstrip("\n"), "```", ""]
        return "\n".join(out)

    def html(self, base: Path | None = None) -> str:
        """The page; images (paths relative to ``base``) are inlined as data URIs when ``base`` is given."""
        e = html.escape
        body = [f"<h1>{e(self.title)}</h1>"]
        for kind, value in self.blocks:
            if kind == "heading":
                body.append(f"<h{value[0]}>{e(value[1])}</h{value[0]}>")
            elif kind == "para":
                body.append(f"<p>{_inline(value)}</p>")
            elif kind == "table":
                header, rows = value
                body.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>"
                            + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
                            + "</table>")
            elif kind == "image":
                src = _data_uri(base / value[0]) if base is not None else value[0]
                body.append(f'<figure><img src="{e(src)}" alt="{e(value[1])}"></figure>')
            elif kind == "quote":
                body.append(f"<p><b>{e(value[0])}</b></p><blockquote>{e(value[1] or '(empty)')}</blockquote>")
            elif kind == "code":
                body.append(f"<pre>{e(value)}</pre>")
        return (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{e(self.title)}</title>"
                f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


STYLE = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em;line-height:1.4}"
         "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}"
         "th{background:#f3f3f3}img{max-width:100%}blockquote{white-space:pre-wrap;border-left:3px solid #ccc;"
         "margin:.3em 0 1em;padding-left:1em;color:#333}pre{background:#f6f6f6;padding:1em;overflow:auto}")


def _data_uri(path: Path) -> str:
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"


def _inline(text: str) -> str:
    """``code`` and **bold** of a Markdown paragraph, as HTML."""
    import re

    out = html.escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)
