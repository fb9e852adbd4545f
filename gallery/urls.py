"""The product's pages under one namespace, `gallery:`: the gallery's and the copyright
reviewers'."""

from .copyright import urls as copyright_urls
from .web import urls as web_urls

app_name = "gallery"

urlpatterns = [*web_urls.urlpatterns, *copyright_urls.urlpatterns]
