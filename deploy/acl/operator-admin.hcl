# ACL policy for people (or CI) who change the desired state: `consul kv put
# services/NAME`, `operator apply|delete|status|wait|plan`. Writes manifests,
# reads what the operator reports; cannot touch the operator's own state.
key_prefix "services/" {
  policy = "write"
}
key_prefix "operator/" {
  policy = "read"
}
service_prefix "" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}
