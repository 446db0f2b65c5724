"""Shared pieces of the HTML reports: the Jinja2 environment, the stylesheet, figures."""
from __future__ import annotations

import base64
from dataclasses import dataclass
from importlib import resources

import jinja2


@dataclass(frozen=True)
class Figure:
    """A figure embedded in a report: its title and base64-encoded PNG."""

    title: str
    data: str

    @classmethod
    def from_png(cls, title: str, png: bytes) -> "Figure":
        return cls(title, base64.b64encode(png).decode("ascii"))


def environment() -> jinja2.Environment:
    """Templates from `shiva_bids/reports/templates`, HTML-escaped, strict about names."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("shiva_bids.reports", "templates"),
        autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.StrictUndefined)


def stylesheet() -> str:
    """The CSS inlined into every report (self-contained pages)."""
    return resources.files("shiva_bids.reports").joinpath("templates/base.css").read_text()
