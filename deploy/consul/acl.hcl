# Consul ACLs on, default deny: installed as /etc/consul.d/acl.hcl on every
# server when provisioning with CONSUL_ACL=1. Then bootstrap once
# (scripts/acl-bootstrap.sh, see docs/deploy.md): it creates the management
# token, the role policies of deploy/acl/ and one token per role, and gives
# every Consul agent its own agent token (a node identity).
acl {
  enabled = true
  default_policy = "deny"
  # When the servers cannot be reached, keep using cached ACL decisions
  # instead of denying: a Consul server outage must not stop the agents'
  # heartbeats or registrations (static stability).
  down_policy = "extend-cache"
  # Tokens given with `consul acl set-agent-token` survive a restart.
  enable_token_persistence = true
}
