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

# Failure detection of a host in about 2 s instead of 5-6 s (issue 33): a host
# cut off is marked failed, its serfHealth goes critical and the leader session
# tied to it ends, so a new operator leader takes over within 5 s of a cut
# (docs/chaos.md, "Where the seconds of a fault go"). Consul's LAN defaults are
# a probe every 1 s (answer within 500 ms, else indirect probes through other
# nodes) and a suspicion of suspicion_mult x max(1, log10(nodes)) x
# probe_interval = 4 s before a suspect is declared failed.
# The cost: twice the probe traffic (a few small UDP packets a second per node,
# nothing on three to a few dozen hosts), and less slack for a slow node: one
# that cannot answer a probe or refute a suspicion within about 2 s (a stall of
# its machine, a Consul restart slower than that) is declared failed, so its
# services' checks turn critical (serfHealth) until it rejoins. Raise
# suspicion_mult (or probe_interval) back towards the defaults on hosts known
# to stall for seconds.
gossip_lan {
  probe_interval = "500ms"
  probe_timeout = "250ms"
  suspicion_mult = 3
}

# A server cut off for more than a few seconds stays a voter (issue 33). By
# default autopilot removes a failed server from Raft (cleanup_dead_servers)
# after about 10 s: three voters become two, so a second fault then leaves one
# of two and no quorum at all, and after the heal the server comes back as a
# non-voter for server_stabilization_time (10 s) before the cluster is healthy
# again. min_quorum = 3 keeps autopilot from pruning below three servers. The
# cost: a server gone for good (a host replaced under another name) stays a
# voter until removed by hand (`consul operator raft remove-peer` or
# `consul force-leave`), as docs/deploy.md says for replacing a host.
autopilot {
  min_quorum = 3
}

disable_update_check = true
log_level = "INFO"
