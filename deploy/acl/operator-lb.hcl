# ACL policy of `operator lb`: read only. It lists the manifests (which
# services exist) and reads the passing instances of each; the health
# endpoints show an instance only when both its service and its node may be
# read. It serves only instances the agents report in their status records
# (operator/status/), at a live agent's address (service operator-agent).
# It never writes anything to Consul.
key_prefix "services/" {
  policy = "read"
}
key_prefix "operator/status/" {
  policy = "read"
}
service_prefix "" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}
