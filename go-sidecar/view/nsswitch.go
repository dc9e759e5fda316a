package view

import (
	"bytes"
	"slices"
	"strings"
)

// The NSS services of the hosts database that answer without asking a
// daemon or a server on the host's network: files (/etc/hosts), myhostname
// (the machine's own name) and dns (resolv.conf's servers: the profile's,
// through the tunnel). resolve (systemd-resolved), mdns* (avahi), wins
// (winbind), ldap, sss, mymachines and the rest ask something on the host.
var localHostsServices = map[string]bool{"files": true, "myhostname": true, "dns": true}

// rewriteNSSwitch is the host's nsswitch.conf with its hosts line cut down
// to localHostsServices (dns always among them, last if it was missing);
// every other line as the host has it. Actions ([NOTFOUND=return]) go with
// the services they followed: with only these three they are not needed,
// and one left after a dropped service would change the meaning.
func rewriteNSSwitch(host []byte) []byte {
	var out bytes.Buffer
	out.WriteString("# wg-wrap: the host's nsswitch.conf, its hosts line limited to services\n" +
		"# that do not resolve names on the host (the profile's DNS goes through the tunnel)\n")
	for _, line := range strings.SplitAfter(string(host), "\n") {
		if line == "" {
			continue
		}
		body, _, _ := strings.Cut(line, "#")
		database, services, found := strings.Cut(body, ":")
		if !found || strings.TrimSpace(database) != "hosts" {
			out.WriteString(line)
			if !strings.HasSuffix(line, "\n") {
				out.WriteByte('\n')
			}
			continue
		}
		out.WriteString("hosts: " + strings.Join(localServices(services), " ") + "\n")
	}
	return out.Bytes()
}

// localServices keeps the local services of a hosts line, in order.
func localServices(line string) []string {
	var kept []string
	depth := 0
	for _, word := range strings.Fields(line) {
		// An action group may hold spaces: [ !UNAVAIL=return ].
		if strings.HasPrefix(word, "[") {
			depth++
		}
		if depth > 0 {
			if strings.HasSuffix(word, "]") {
				depth--
			}
			continue
		}
		if localHostsServices[word] && !slices.Contains(kept, word) {
			kept = append(kept, word)
		}
	}
	if !slices.Contains(kept, "dns") {
		kept = append(kept, "dns")
	}
	return kept
}
