"""``manage.py federation``: the operator's side of the handshake (WIRE.md §6.2).

    federation connect <url> [--api-key K] [--scopes company public] [--tenant T]
    federation list [--tenant T]
    federation approve <peer_id> --fingerprint sha256:...
    federation suspend|resume|revoke <peer_id>
    federation fingerprint

The operator acts node-wide: a peer is named by its id alone, whatever its tenant.
"""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from federation import handshake
from federation.models import Peer
from stigmem import signing
from stigmem.errors import ApiError
from stigmem.fact_input import SCOPES
from stigmem.management.operator import cli_operator
from stigmem.node import node_id

DEFAULT_SCOPES = ["company", "public"]


class Command(BaseCommand):
    help = "Connect to, list, approve, suspend, resume and revoke federation peers; show this node's fingerprint."

    def add_arguments(self, parser) -> None:
        commands = parser.add_subparsers(dest="subcommand", required=True, metavar="subcommand")

        connect = commands.add_parser("connect", help="offer this node to a remote node and record it here")
        connect.add_argument("url", help="the remote node's base URL, e.g. https://node.example.com")
        connect.add_argument("--api-key", help="an API key of the remote with the federate permission")
        connect.add_argument(
            "--scopes",
            nargs="+",
            choices=SCOPES,
            default=DEFAULT_SCOPES,
            help="scopes of the agreement (default: company public)",
        )
        connect.add_argument("--tenant", help="local tenant of the agreement (default: STIGMEM_DEFAULT_TENANT)")

        listing = commands.add_parser("list", help="list peers")
        listing.add_argument("--tenant", help="only this tenant's peers (default: every tenant)")

        approve = commands.add_parser("approve", help="activate a pending peer after comparing its fingerprint")
        approve.add_argument("peer_id")
        approve.add_argument("--fingerprint", required=True, help="the peer's fingerprint, as its operator read it")

        for action, text in (
            ("suspend", "stop replicating with an active peer"),
            ("resume", "replicate again with a suspended peer"),
            ("revoke", "end the agreement for good"),
        ):
            commands.add_parser(action, help=text).add_argument("peer_id")

        commands.add_parser("fingerprint", help="show this node's id and key fingerprint")

    def handle(self, *args, subcommand: str, **options) -> None:
        try:
            getattr(self, f"_{subcommand}")(**options)
        except (handshake.ConnectFailed, ApiError) as exc:
            raise CommandError(str(exc.detail if isinstance(exc, ApiError) else exc)) from None

    def _connect(self, *, url: str, api_key: str | None, scopes: list[str], tenant: str | None, **_) -> None:
        result = handshake.connect(
            url,
            api_key=api_key,
            scopes=scopes,
            tenant=tenant or settings.STIGMEM_DEFAULT_TENANT,
            actor=cli_operator(),
        )
        peer = result.peer
        if result.remote_status == "already_registered":
            remote = f"already has this node registered ({result.remote_detail})"
        else:
            remote = f"registered this node as {result.remote_status}"
        self.stdout.write(
            f"remote:              {peer.node_url} {remote}\n"
            f"peer id:             {peer.peer_id}\n"
            f"peer node id:        {peer.node_id}\n"
            f"local status:        {peer.status}\n"
            f"our fingerprint:     {result.own_fingerprint}\n"
            f"their fingerprint:   {result.peer_fingerprint}\n"
        )
        if result.remote_status == Peer.Status.REJECTED:
            self.stdout.write(
                "The remote could not verify this node: check that STIGMEM_NODE_URL "
                f"({settings.STIGMEM_NODE_URL}) reaches this node from the remote without redirects, "
                "then run connect again.\n"
            )
        if peer.status != Peer.Status.PENDING_APPROVAL:
            self.stdout.write(f"The local peer record is {peer.status} and was left unchanged.\n")
            return
        self.stdout.write(
            "Next: compare fingerprints with the remote's operator over a channel you trust. They should see "
            "our fingerprint above when they approve this node on their side; if the fingerprint they read "
            f"out from `manage.py federation fingerprint` equals theirs above, approve them here with:\n"
            f"  manage.py federation approve {peer.peer_id} --fingerprint {result.peer_fingerprint}\n"
        )

    def _list(self, *, tenant: str | None, **_) -> None:
        peers = handshake.list_peers(tenant)
        if not peers:
            self.stdout.write("no peers")
            return
        for peer in peers:
            self.stdout.write(
                f"{peer.peer_id}  {peer.status:<20} {peer.node_id}  {peer.node_url}  "
                f"tenant={peer.tenant} scopes={','.join(peer.allowed_scopes)} origin={peer.origin} "
                f"fingerprint={handshake.fingerprint(peer.federation_pubkey)}"
            )

    def _approve(self, *, peer_id: str, fingerprint: str, **_) -> None:
        # The operator is node-wide: the peer's own tenant is the one acted in.
        peer = handshake.find_peer(peer_id)
        peer = handshake.approve(peer.tenant, peer.peer_id, fingerprint, cli_operator())
        self.stdout.write(f"approved: {peer.node_id} (peer {peer.peer_id}) is active")

    def _change(self, action: str, peer_id: str) -> None:
        peer = handshake.find_peer(peer_id)
        peer = handshake.change_status(peer.tenant, peer.peer_id, action, cli_operator())
        self.stdout.write(f"{action}: {peer.node_id} (peer {peer.peer_id}) is {peer.status}")

    def _suspend(self, *, peer_id: str, **_) -> None:
        self._change("suspend", peer_id)

    def _resume(self, *, peer_id: str, **_) -> None:
        self._change("resume", peer_id)

    def _revoke(self, *, peer_id: str, **_) -> None:
        self._change("revoke", peer_id)

    def _fingerprint(self, **_) -> None:
        pubkey = signing.public_key_b64()
        self.stdout.write(
            f"node id:       {node_id()}\n"
            f"node url:      {settings.STIGMEM_NODE_URL}\n"
            f"public key:    {pubkey}\n"
            f"fingerprint:   {handshake.fingerprint(pubkey)}"
        )
