from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path
from django.views.static import serve

from gallery import api

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include((api.urlpatterns, "api"))),
    path("", include("gallery.urls")),
]

if settings.IMAGESEARCH["SERVE_MEDIA"]:
    # The embedded default serves media itself; production puts a web server or object
    # storage in front and turns this off.
    urlpatterns += [re_path(r"^media/(?P<path>.*)$", serve, {"document_root": settings.MEDIA_ROOT})]
