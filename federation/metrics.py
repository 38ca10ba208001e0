"""Federation metrics (DESIGN.md §9): labelled by peer node id, which operators approve one by one."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

INGRESS = Counter(
    "stigmem_federation_ingress_facts", "Facts received from peers, by peer and outcome", ["peer", "outcome"]
)
EGRESS = Counter("stigmem_federation_egress_facts", "Facts served to peers, by peer", ["peer"])
PULLS = Counter("stigmem_federation_pulls", "Pulls of a peer, by peer and outcome", ["peer", "outcome"])
REPLICATION_LAG = Gauge(
    "stigmem_federation_replication_lag_seconds",
    "Now minus the timestamp of the newest fact ingested from the peer, set after each pull",
    ["peer"],
    multiprocess_mode="mostrecent",
)
TOKEN_REJECTIONS = Counter("stigmem_federation_token_rejections", "Peer tokens refused, by reason", ["reason"])
