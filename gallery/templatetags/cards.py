"""The image card of the gallery and of every result list, drawn in Python: a search page
draws ten to a hundred of them, and through the template engine they were most of its
rendering time. The markup is the card's one definition."""

from __future__ import annotations

from django import template
from django.template.defaultfilters import urlencode
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from gallery import links
from gallery.catalog import tagnames
from gallery.catalog.models import Image

register = template.Library()


def _score_text(score: float) -> str:
    """The score to three decimals ("0.873"; never "-0.000"): floatformat:3's text, without
    its decimal arithmetic (they differ only on exact halves such as 1.0005)."""
    text = f"{score:.3f}"
    return "0.000" if text == "-0.000" else text


@register.simple_tag(takes_context=True)
def card(context: template.Context, image: Image, score: float | None = None) -> SafeString:
    """`image` as a card: its thumbnail linking to its page, title, score (under the
    page's `metric`), tags linking to the gallery, status and "More like this"."""
    detail_url = links.reverse_once("gallery:detail", image.pk)
    title = image.display_title
    status = image.status
    scored: SafeString | str = ""
    if score is not None:
        metric = context.get("metric") or "score"
        scored = format_html(
            '<span class="score" title="{}"><span class="visually-hidden">{} </span>{}</span>',
            metric,
            metric,
            _score_text(score),
        )
    names = tagnames.names_of(image)
    tagged: SafeString | str = ""
    if names:
        index_url = links.reverse_once("gallery:index")
        tagged = format_html_join("", '<a class="tag" href="{}?tag={}">{}</a>', ((index_url, urlencode(n), n) for n in names))
    more: SafeString | str = ""
    if status == Image.Status.READY:
        more = format_html(
            '<a class="more" href="{}#similar">More like this<span class="visually-hidden"> {}</span></a>', detail_url, title
        )
    return format_html(
        '<li class="card" data-image-id="{pk}" data-status="{status}" data-full-src="{full}" data-title="{title}">\n'
        '  <a href="{detail}">\n'
        '    <img src="{thumb}" alt="{title}" loading="lazy" width="200" height="200">\n'
        "  </a>\n"
        '  <div class="meta">\n'
        '    <span class="name" title="{title}">{title}</span>\n'
        "    {scored}\n"
        "    {tagged}\n"
        '    <span class="status status-{status}" role="status">{status_text}</span>\n'
        "  </div>\n"
        '  <div class="actions">{more}</div>\n'
        "</li>\n",
        pk=image.pk,
        status=status,
        full=image.display_url,
        title=title,
        detail=detail_url,
        thumb=image.thumbnail_url,
        scored=scored,
        tagged=tagged,
        status_text=image.get_status_display(),
        more=more,
    )
