# wg-wrap's own completers, named by the `.complete` hints in wg_wrap/cli.py.
# Each gets the word being completed in $1 and prints one candidate a line.

# The running profiles: the directories in wg-wrap's runtime directory, which
# is $XDG_RUNTIME_DIR/wg-wrap when that is an existing absolute directory,
# else /tmp/wg-wrap-EUID (wg_wrap/runtime.py).
_wg_wrap_profiles() {
  local base=/tmp/wg-wrap-$EUID dir
  local -a names=()
  if [[ ${XDG_RUNTIME_DIR-} == /* && -d ${XDG_RUNTIME_DIR} ]]; then
    base=$XDG_RUNTIME_DIR/wg-wrap
  fi
  for dir in "$base"/*/; do
    [[ -d $dir ]] || continue
    dir=${dir%/}
    names+=("${dir##*/}")
  done
  compgen -W "${names[*]}" -- "$1"
}

# NAME for every NAME.conf in the config directory, which `-n NAME` finds.
_wg_wrap_config_names() {
  local file
  local -a names=()
  for file in "${XDG_CONFIG_HOME:-$HOME/.config}"/wg-wrap/*.conf; do
    [[ -f $file ]] || continue
    file=${file##*/}
    names+=("${file%.conf}")
  done
  compgen -W "${names[*]}" -- "$1"
}

# *.conf files, and directories to find them in.
_wg_wrap_config_files() {
  compgen -f -X '!*.conf' -- "$1"
  compgen -d -- "$1"
}
