"""The image card of the gallery and of every result list, drawn in Python: a search page
draws ten to a hundred of them, and through the template engine they were most of its
rendering time. The markup is the card's one definition."""

from __future__ import annotations

from typing import Any

from django import template
from django.template.defaultfilters import floatformat, urlencode
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from gallery.catalog.models import Image

register = template.Library()


@register.simple_tag(takes_context=True)
def card(context: template.Context, image: Image, score: float | None = None) -> SafeString:
    """`image` as a card: its thumbnail linking to its page, title, score (under the
    page's `metric`), tags linking to the gallery, status and "More like this"."""
    detail_url = reverse("gallery:detail", args=[image.pk])
    title = image.display_title
    status = image.status
    scored: SafeString | str = ""
    if score is not None:
        metric = context.get("metric") or "score"
        scored = format_html(
            '<span class="score" title="{}"><span class="visually-hidden">{} </span>{}</span>',
            metric,
            metric,
            floatformat(score, 3),
        )
    tags: Any = image.tags.all()
    tagged: SafeString | str = ""
    if tags:
        index_url = reverse("gallery:index")
        tagged = format_html_join(
            "", '<a class="tag" href="{}?tag={}">{}</a>', ((index_url, urlencode(t.name), t.name) for t in tags)
        )
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
