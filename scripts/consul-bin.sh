# Sourced by staging.sh and nodes.sh (not run): the consul binary as `make deps` finds it.
# Needs the caller's ROOT (the checkout) and die().

# consul_bin: consul on PATH, else the one `make deps` put in the checkout's .tools/bin.
consul_bin() {
  command -v consul 2>/dev/null || { [[ -x $ROOT/.tools/bin/consul ]] && echo "$ROOT/.tools/bin/consul"; } \
    || die "no consul binary: run 'make deps'"
}
