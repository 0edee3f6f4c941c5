from django.urls import path

from . import views

urlpatterns = [
    path("login", views.login),
    path("orders/<str:order>", views.order_page),
    path("orders/<str:order>/status", views.set_status),
]
