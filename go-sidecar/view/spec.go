package view

import "path/filepath"

// A rule says what a directory's view does with one of the host's entries.
type rule int

const (
	mirror   rule = iota // the host's entry itself: bound (live), or a symlink copied
	deny                 // never shown: a host resolver's socket directory
	generate             // a file the view writes (Config says what)
	nested               // a view of its own of the host's directory
)

// dirSpec describes one viewed directory: its path (the same in the host's
// and the profile's namespace), the entries that are not mirrored, and the
// specs of its nested views.
type dirSpec struct {
	path   string
	rules  map[string]rule
	nested map[string]*dirSpec
}

func (s *dirSpec) rule(name string) rule {
	if r, ok := s.rules[name]; ok {
		return r
	}
	return mirror
}

// etcSpec: /etc as the host has it, but resolv.conf, which is always a
// file of the view (the profile's DNS, or a copy of the host's, kept up to
// date), and, when the profile has DNS, nsswitch.conf (the host's with its
// hosts line cut down to what does not resolve on the host: see nsswitch.go).
func etcSpec(path string, dns bool) *dirSpec {
	s := &dirSpec{path: path, rules: map[string]rule{resolvConf: generate}}
	if dns {
		s.rules[nsswitchConf] = generate
	}
	return s
}

// runSpec: /run as the host has it, without the sockets of the daemons that
// resolve names for a program on the host's network: nscd (which glibc asks
// before anything else), avahi (nss-mdns), systemd-resolved (nss-resolve,
// inside /run/systemd, which is otherwise shown).
func runSpec(path string) *dirSpec {
	return &dirSpec{
		path:  path,
		rules: map[string]rule{"nscd": deny, "avahi-daemon": deny, "systemd": nested},
		nested: map[string]*dirSpec{
			"systemd": {path: filepath.Join(path, "systemd"), rules: map[string]rule{"resolve": deny}},
		},
	}
}

const (
	resolvConf   = "resolv.conf"
	nsswitchConf = "nsswitch.conf"
)
