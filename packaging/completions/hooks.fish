# wg-wrap's own completers, named by the `.complete` hints in wg_wrap/cli.py.

# The running profiles: the directories in wg-wrap's runtime directory, which
# is $XDG_RUNTIME_DIR/wg-wrap when that is an existing absolute directory,
# else /tmp/wg-wrap-EUID (wg_wrap/runtime.py).
function _wg_wrap_profiles
    set -l base /tmp/wg-wrap-(id -u)
    if string match -q -- '/*' "$XDG_RUNTIME_DIR"; and test -d "$XDG_RUNTIME_DIR"
        set base $XDG_RUNTIME_DIR/wg-wrap
    end
    for dir in $base/*/
        string replace -r -- '^.*/([^/]+)/$' '$1' $dir
    end
end

# NAME for every NAME.conf in the config directory, which `-n NAME` finds.
function _wg_wrap_config_names
    set -l dir $HOME/.config/wg-wrap
    if set -q XDG_CONFIG_HOME; and test -n "$XDG_CONFIG_HOME"
        set dir $XDG_CONFIG_HOME/wg-wrap
    end
    for file in $dir/*.conf
        test -f $file; and string replace -r -- '^.*/([^/]+)\.conf$' '$1' $file
    end
end

# *.conf files, and directories to find them in (__fish_complete_suffix
# would offer every other file too).
function _wg_wrap_config_files
    set -l token (commandline -ct | string replace -r -- '^--[^=]*=' '')
    for candidate in (__fish_complete_path $token)
        set -l path (string split -m1 \t -- $candidate)[1]
        string match -q -r -- '(\.conf|/)$' $path; and printf '%s\n' $candidate
    end
end
