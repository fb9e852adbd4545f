"""The JSON API's routes, /api/v1/."""

from __future__ import annotations

from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from gallery import converters  # noqa: F401 - registers <id:…>

from .views import (
    ImageDetailView,
    ImageListView,
    ImageStatusView,
    OfflineRedocView,
    SearchView,
    SimilarView,
    TokenView,
    WordSuggestionsView,
    api_not_found,
)

urlpatterns = [
    path("images/", ImageListView.as_view(), name="image-list"),
    path("images/<id:pk>/", ImageDetailView.as_view(), name="image-detail"),
    path("images/<id:pk>/status/", ImageStatusView.as_view(), name="image-status"),
    path("images/<id:pk>/similar/", SimilarView.as_view(), name="image-similar"),
    path("search/", SearchView.as_view(), name="search"),
    path("search/words/", WordSuggestionsView.as_view(), name="search-words"),
    path("auth/token/", TokenView.as_view(), name="token"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    # The split view serves its script as a file: the page works under the site's CSP.
    path("docs/", SpectacularSwaggerSplitView.as_view(url_name="api:schema"), name="docs"),
    path("redoc/", OfflineRedocView.as_view(url_name="api:schema"), name="redoc"),
    re_path(r"^(?P<path>.*)$", api_not_found),
]
