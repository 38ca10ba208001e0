"""PLACEHOLDER, replaced by the helper writing serving (issue 5)."""

from rest_framework.views import APIView


class FactsView(APIView):
    pass


class PushView(APIView):
    pass


class TombstonesView(APIView):
    pass
