from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.http import HttpRequest, HttpResponse
from django.urls import include, path, re_path
from django.views.static import serve

from gallery.api import urls as api_urls
from gallery.monitoring import views as monitoring
from gallery.ratelimit import sign_in_limited

handler400 = "gallery.web.views.bad_request"

urlpatterns = [
    # Sign-in doors share one per-account and per-address back-off (gallery/ratelimit.py);
    # the API's token endpoint applies it too.
    path("admin/login/", sign_in_limited(admin.site.login)),
    path("admin/", admin.site.urls),
    path("api/v1/", include((api_urls.urlpatterns, "api"))),
    path("accounts/login/", sign_in_limited(auth_views.LoginView.as_view()), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    # Probes and metrics (normally answered by gallery.monitoring.middleware.ProbeMiddleware
    # before the host check; routed here for staff asking for /metrics in the browser).
    path("healthz", monitoring.healthz, name="healthz"),
    path("readyz", monitoring.readyz, name="readyz"),
    path("metrics", monitoring.metrics, name="metrics"),
    path("", include("gallery.urls")),
]

if settings.IMAGESEARCH["SERVE_MEDIA"]:
    # The embedded default serves media itself; production puts a web server or object
    # storage in front and turns this off.
    def media(request: HttpRequest, path: str) -> HttpResponse:
        return serve(request, path, document_root=settings.MEDIA_ROOT)

    urlpatterns += [re_path(r"^media/(?P<path>.*)$", media)]
