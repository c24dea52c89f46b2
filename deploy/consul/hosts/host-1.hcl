# host-1 of the Vagrant topology: installed as /etc/consul.d/host.hcl.
node_name = "host-1"
# The private network's address: gossip and RPC between the servers.
bind_addr = "192.168.50.101"
advertise_addr = "192.168.50.101"
# The HTTP API: loopback for this host's operator, and the private address
# for the other hosts and for people on the staging network. With ACLs on
# (acl.hcl) every request there needs a token.
client_addr = "127.0.0.1 192.168.50.101"
# The three servers of the topology, joined by address.
retry_join = ["192.168.50.101", "192.168.50.102", "192.168.50.103"]
