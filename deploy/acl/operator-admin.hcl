# ACL policy for people (or CI) who change the desired state: `consul kv put
# services/NAME`, `operator apply|delete|status|wait|plan|rollback`, and who
# take hosts out for maintenance: `operator cordon|drain|uncordon HOST`.
# Writes manifests, rollback requests (operator/rollback/<name>), volume
# removal requests (operator/volume-removals/<name>) and
# maintenance records (operator/hosts/<host>), and the services' secrets
# (secrets/<service>/<name>: `consul kv put secrets/web/db_password -`), the
# values templates read (config/: `consul kv put config/web/greeting hi`), reads
# what the operator reports; cannot touch the rest of the operator's own state.
key_prefix "services/" {
  policy = "write"
}
key_prefix "secrets/" {
  policy = "write"
}
key_prefix "config/" {
  policy = "write"
}
key_prefix "operator/" {
  policy = "read"
}
# The most specific rule wins: write on operator/hosts/ (cordon, drain) and
# operator/rollback/ (`operator rollback NAME`) only.
key_prefix "operator/hosts/" {
  policy = "write"
}
key_prefix "operator/rollback/" {
  policy = "write"
}
# `operator delete NAME --volumes`: a request that every agent removes NAME's volumes.
key_prefix "operator/volume-removals/" {
  policy = "write"
}
service_prefix "" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}
