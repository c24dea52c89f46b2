# ACL policy of `operator lb`. No rule on secrets/: the load balancer never
# reads a secret (its status page shows a service with secrets as written). It lists the manifests (which services exist)
# and reads the passing instances of each; the health endpoints show an
# instance only when both its service and its node may be read. It serves
# only instances the agents report in their status records
# (operator/status/), at a live agent's address (service operator-agent).
# Its status page (/ on --metrics-addr) reads the rest of operator/ (leader,
# placements, rollouts, hosts, events). The one thing it writes is its own
# events: operator/events/<service>/lb-<listen> (a refused NGINX reload). It
# registers itself (service operator-lb, with a TTL check and whether its host
# holds the floating address) on its own Consul agent, for `operator status`.
key_prefix "services/" {
  policy = "read"
}
key_prefix "operator/" {
  policy = "read"
}
# The most specific rule wins: write on operator/events/ only.
key_prefix "operator/events/" {
  policy = "write"
}
service_prefix "" {
  policy = "read"
}
service "operator-lb" {
  policy = "write"
}
node_prefix "" {
  policy = "read"
}
