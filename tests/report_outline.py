"""The shape of a report.html, to hold two reports to each other: its section headings, its
figures, the columns of its tables and whether it opens with a headline."""

from dataclasses import dataclass, field
from html.parser import HTMLParser


@dataclass
class Outline:
    headings: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    tables: list[list[str]] = field(default_factory=list)  # header cells of each table
    headline: str = ""


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.outline = Outline()
        self._in: str | None = None
        self._text = ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "figure":
            self.outline.figures.append(a.get("id", ""))
        elif tag == "table":
            self.outline.tables.append([])
        elif tag in ("h2", "th") or (tag == "p" and a.get("class") == "headline"):
            self._in, self._text = ("headline" if tag == "p" else tag), ""

    def handle_data(self, data):
        if self._in:
            self._text += data

    def handle_endtag(self, tag):
        if self._in == "h2" and tag == "h2":
            self.outline.headings.append(self._text.strip())
        elif self._in == "th" and tag == "th":
            self.outline.tables[-1].append(self._text.strip())
        elif self._in == "headline" and tag == "p":
            self.outline.headline = self._text.strip()
        else:
            return
        self._in = None


def outline(page: str) -> Outline:
    p = _Parser()
    p.feed(page)
    return p.outline
