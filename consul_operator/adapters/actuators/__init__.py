"""The edges that act on the world: Docker containers, Consul registrations, NGINX."""
