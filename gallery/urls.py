from django.urls import path

from . import converters, views  # noqa: F401 - converters registers <id:…>

app_name = "gallery"

urlpatterns = [
    path("", views.gallery_index, name="index"),
    path("upload/", views.image_upload, name="upload"),
    path("uploads/", views.upload_status, name="upload_status"),
    path("my-uploads/", views.my_uploads, name="my_uploads"),
    path("images/status/", views.image_status_json, name="status_json"),
    path("images/<id:pk>/", views.image_detail, name="detail"),
    path("images/<id:pk>/picture/<str:kind>/", views.image_picture, name="picture"),
    path("search/", views.search, name="search"),
]

# ---------------------------------------------------------------- copyright monitoring
from . import copyright_views  # noqa: E402

urlpatterns += [
    path("copyright/", copyright_views.match_queue, name="copyright_queue"),
    path("copyright/matches/<id:pk>/", copyright_views.match_detail, name="copyright_match"),
    path("copyright/matches/<id:pk>/decide/", copyright_views.match_decide, name="copyright_decide"),
    path("copyright/matches/dismiss/", copyright_views.matches_dismiss, name="copyright_dismiss"),
    path("copyright/decisions/", copyright_views.decision_log, name="copyright_decisions"),
    path("copyright/decisions/<id:pk>/<str:side>.jpg", copyright_views.decision_thumbnail, name="copyright_decision_thumbnail"),
    path("copyright/works/", copyright_views.work_list, name="copyright_works"),
    path("copyright/works/new/", copyright_views.work_register, name="copyright_register"),
    path("copyright/works/<id:pk>/image/", copyright_views.work_file, name="copyright_work_file"),
]
