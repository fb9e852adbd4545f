"""The staff operations page."""

from django.urls import path

from . import views

urlpatterns = [path("operations/", views.operations_page, name="operations")]
