"""PLACEHOLDER, replaced by the helper writing the handshake (issue 5)."""

from rest_framework.views import APIView


class PeersView(APIView):
    pass


class PeerActionView(APIView):
    pass
