# host-4 of the Vagrant topology, the second load balancer: installed as
# /etc/consul.d/host.hcl. A Consul client agent, not a fourth server: the
# three servers keep their quorum of two, and `operator lb` here reads
# through its own local agent like every daemon.
node_name = "host-4"
server = false
bootstrap_expect = 0
# The private network's address: gossip with the servers.
bind_addr = "192.168.50.104"
advertise_addr = "192.168.50.104"
# The HTTP API: loopback for this host's operator, and the private address
# for people on the staging network. With ACLs on (acl.hcl) every request
# there needs a token.
client_addr = "127.0.0.1 192.168.50.104"
# The three servers of the topology, joined by address.
retry_join = ["192.168.50.101", "192.168.50.102", "192.168.50.103"]
