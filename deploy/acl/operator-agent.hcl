# ACL policy of `operator agent` (one token for every app host's agent).
# Least privilege for what the agent does, checked against Consul 1.8's rules
# by tests/integration/test_acl.py:
#
#   operator/        the leader lock (acquire/release), placements (fenced
#                    transactions), this host's status records: write
#   services/        the manifests: read only; people (or `operator apply`
#                    with their own token) write them
#   secrets/         the services' secrets (secrets/<service>/<name>): read
#                    only; the leader reads their versions, each agent the
#                    values of the replicas it starts; an admin writes them
#   config/          what templates' key() reads: read only (the leader
#                    renders); an admin writes it
#   services         the agent registers itself ("operator-agent", with a TTL
#                    check) and one instance per replica, named after the
#                    manifest. Manifest names are chosen by whoever writes
#                    services/, so the agent needs write on every service
#                    name. Where the set of services is fixed, replace the
#                    service_prefix rule by one `service "NAME"` rule per
#                    manifest plus `service "operator-agent"`, and
#                    `service_prefix "" { policy = "read" }`.
#   sessions         the leader-election session, created on the agent's own
#                    node (a session rule names the node)
#   nodes            read: the health endpoints show an instance only when
#                    its node may be read, and live hosts are read from them
#   agent            read: the agent asks its Consul agent for its node name
key_prefix "operator/" {
  policy = "write"
}
key_prefix "services/" {
  policy = "read"
}
key_prefix "secrets/" {
  policy = "read"
}
key_prefix "config/" {
  policy = "read"
}
service_prefix "" {
  policy = "write"
}
session_prefix "" {
  policy = "write"
}
node_prefix "" {
  policy = "read"
}
agent_prefix "" {
  policy = "read"
}
