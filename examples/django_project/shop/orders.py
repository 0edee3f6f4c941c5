"""The shop's orders: who owns each, and its status (models in a real site)."""

ORDERS: dict[str, dict[str, str]] = {
    "42": {"owner": "alice", "status": "placed"},
    "43": {"owner": "bob", "status": "placed"},
}
