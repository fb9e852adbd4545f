"""The product's pages under one namespace, `gallery:`: the gallery's, the copyright
reviewers' and the staff operations page."""

from .copyright import urls as copyright_urls
from .operations import urls as operations_urls
from .web import urls as web_urls

app_name = "gallery"

urlpatterns = [*web_urls.urlpatterns, *copyright_urls.urlpatterns, *operations_urls.urlpatterns]
