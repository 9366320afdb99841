"""The portal's URLs plus a bare DRF endpoint, the yardstick of the overhead benchmark."""

from django.urls import path
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from cvm_portal.urls import urlpatterns as portal_urls


class BareApi(APIView):
    """Parses the same JSON body and answers 201: everything DRF and the middleware cost, and no more."""

    def post(self, request: Request) -> Response:
        return Response({"serial": request.data.get("serial")}, status=201)


urlpatterns = [*portal_urls, path("bench/bare", BareApi.as_view())]
