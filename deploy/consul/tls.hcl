# Consul secured (the default of scripts/provision.sh; CONSUL_TLS=0 leaves this
# file out): installed as /etc/consul.d/tls.hcl on every server, with the
# gossip key in /etc/consul.d/encrypt.hcl (0600, owned by consul). The CA and
# the certificates come from `consul tls ca create` / `consul tls cert create`
# (scripts/consul-secrets.sh), never from the repository.

# Every agent's own certificate, signed by the cluster's CA.
ca_file = "/etc/consul.d/tls/ca.pem"
cert_file = "/etc/consul.d/tls/server.pem"
key_file = "/etc/consul.d/tls/server-key.pem"

# Mutual TLS: RPC and HTTPS clients must present a certificate of this CA
# (verify_incoming), servers are checked on the way out (verify_outgoing),
# and a server's certificate must say server.<dc>.consul, which a client
# certificate does not (verify_server_hostname).
verify_incoming = true
verify_outgoing = true
verify_server_hostname = true

# HTTPS only: the plain HTTP API is off.
ports {
  http = -1
  https = 8501
}
