"""The pages of the gallery: browsing, uploading, a user's uploads, search."""

from django.urls import path

from gallery import converters  # noqa: F401 - registers <id:…>

from . import views

urlpatterns = [
    path("", views.gallery_index, name="index"),
    path("upload/", views.image_upload, name="upload"),
    path("uploads/", views.upload_status, name="upload_status"),
    path("my-uploads/", views.my_uploads, name="my_uploads"),
    path("images/status/", views.image_status_json, name="status_json"),
    path("images/<id:pk>/", views.image_detail, name="detail"),
    path("images/<id:pk>/picture/<str:kind>/", views.image_picture, name="picture"),
    path("search/", views.search, name="search"),
    path("search/words/", views.search_words, name="search_words"),
    path("images/<id:pk>/region/", views.search_region, name="search_region"),
]
