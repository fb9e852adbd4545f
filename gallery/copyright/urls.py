"""The copyright reviewers' pages."""

from django.urls import path

from gallery import converters  # noqa: F401 - registers <id:…>

from . import views

urlpatterns = [
    path("copyright/", views.match_queue, name="copyright_queue"),
    path("copyright/matches/<id:pk>/", views.match_detail, name="copyright_match"),
    path("copyright/matches/<id:pk>/decide/", views.match_decide, name="copyright_decide"),
    path("copyright/matches/dismiss/", views.matches_dismiss, name="copyright_dismiss"),
    path("copyright/decisions/", views.decision_log, name="copyright_decisions"),
    path("copyright/decisions/<id:pk>/<str:side>.jpg", views.decision_thumbnail, name="copyright_decision_thumbnail"),
    path("copyright/works/", views.work_list, name="copyright_works"),
    path("copyright/works/new/", views.work_register, name="copyright_register"),
    path("copyright/works/<id:pk>/image/", views.work_file, name="copyright_work_file"),
]
