# wg-wrap's own completers, named by the `.complete` hints in wg_wrap/cli.py.

# The running profiles: the directories in wg-wrap's runtime directory, which
# is $XDG_RUNTIME_DIR/wg-wrap when that is an existing absolute directory,
# else /tmp/wg-wrap-EUID (wg_wrap/runtime.py).
_wg_wrap_profiles() {
  local base=/tmp/wg-wrap-$EUID expl
  local -a names
  if [[ $XDG_RUNTIME_DIR == /* && -d $XDG_RUNTIME_DIR ]]; then
    base=$XDG_RUNTIME_DIR/wg-wrap
  fi
  names=( $base/*(N/:t) )
  _wanted profiles expl 'running profile' compadd -a names
}

# NAME for every NAME.conf in the config directory, which `-n NAME` finds.
_wg_wrap_config_names() {
  local expl
  local -a names
  names=( ${XDG_CONFIG_HOME:-$HOME/.config}/wg-wrap/*.conf(N-.:t:r) )
  _wanted config-names expl 'config name' compadd -a names
}
