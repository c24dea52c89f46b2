# Consul on every host of the Vagrant topology (deploy/README in docs/deploy.md):
# three servers, one Raft cluster, joined by address. The host's own
# addresses, its name and the servers to join (retry_join) are in
# /etc/consul.d/host.hcl (deploy/consul/hosts/).
datacenter = "dc1"
data_dir = "/var/lib/consul"
server = true
bootstrap_expect = 3

# Nothing of ours uses Consul's DNS interface.
ports {
  dns = -1
}

# Leader election and failure detection in seconds (Consul's production
# recommendation for servers with adequate CPU), as in the local staging
# environment.
performance {
  raft_multiplier = 1
}

disable_update_check = true
log_level = "INFO"
