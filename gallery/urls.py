from django.urls import path

from . import views

app_name = "gallery"

urlpatterns = [
    path("", views.gallery_index, name="index"),
    path("upload/", views.image_upload, name="upload"),
    path("uploads/", views.upload_status, name="upload_status"),
    path("images/status/", views.image_status_json, name="status_json"),
    path("images/<int:pk>/", views.image_detail, name="detail"),
    path("search/", views.search, name="search"),
]
