package proxy

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"
)

func TestReadRequest(t *testing.T) {
	for name, tc := range map[string]struct {
		in   []byte
		cmd  byte
		want string
		err  bool
	}{
		"ipv4":              {[]byte{5, 1, 0, 1, 10, 77, 0, 1, 0x1f, 0x90}, cmdConnect, "10.77.0.1:8080", false},
		"ipv6":              {append(append([]byte{5, 1, 0, 4}, netip.MustParseAddr("fd00::1").AsSlice()...), 0, 80), cmdConnect, "[fd00::1]:80", false},
		"v4-mapped":         {append(append([]byte{5, 3, 0, 4}, netip.MustParseAddr("::ffff:10.0.0.1").AsSlice()...), 0, 53), cmdUDPAssociate, "10.0.0.1:53", false},
		"domain":            {append([]byte{5, 1, 0, 3, 17}, append([]byte("peer.wg-wrap.test"), 0, 80)...), cmdConnect, "peer.wg-wrap.test:80", false},
		"bind":              {[]byte{5, 2, 0, 1, 0, 0, 0, 0, 0, 0}, cmdBind, "0.0.0.0:0", false},
		"version 4":         {[]byte{4, 1, 0, 1, 10, 0, 0, 1, 0, 80}, 0, "", true},
		"atyp 2":            {[]byte{5, 1, 0, 2, 10, 0, 0, 1, 0, 80}, 0, "", true},
		"empty name":        {[]byte{5, 1, 0, 3, 0, 0, 80}, 0, "", true},
		"name with a space": {append([]byte{5, 1, 0, 3, 3}, 'a', ' ', 'b', 0, 80), 0, "", true},
		"short":             {[]byte{5, 1, 0, 1, 10, 0}, 0, "", true},
		"short name":        {[]byte{5, 1, 0, 3, 10, 'a'}, 0, "", true},
	} {
		t.Run(name, func(t *testing.T) {
			cmd, dst, err := readRequest(bytes.NewReader(tc.in))
			if tc.err {
				if err == nil {
					t.Fatalf("accepted: %v %v", cmd, dst)
				}
				return
			}
			if err != nil || cmd != tc.cmd || dst.String() != tc.want {
				t.Fatalf("got %d %v %v, want %d %s", cmd, dst, err, tc.cmd, tc.want)
			}
		})
	}
}

func TestGreetingAndUserPass(t *testing.T) {
	methods, err := readGreeting(bytes.NewReader([]byte{5, 2, 0, 2}))
	if err != nil || !bytes.Equal(methods, []byte{0, 2}) {
		t.Fatalf("greeting: %v %v", methods, err)
	}
	for _, bad := range [][]byte{{4, 1, 0}, {5, 0}, {5, 3, 0}} {
		if _, err := readGreeting(bytes.NewReader(bad)); err == nil {
			t.Errorf("greeting %v accepted", bad)
		}
	}
	user, pass, err := readUserPass(bytes.NewReader([]byte{1, 3, 'b', 'o', 'b', 4, 's', 'e', 'c', 'r'}))
	if err != nil || user != "bob" || pass != "secr" {
		t.Fatalf("user/pass: %q %q %v", user, pass, err)
	}
	// An empty password is a password (RFC 1929 asks for 1..255 bytes; be lenient).
	if u, p, err := readUserPass(bytes.NewReader([]byte{1, 1, 'x', 0})); err != nil || u != "x" || p != "" {
		t.Fatalf("empty password: %q %q %v", u, p, err)
	}
	for _, bad := range [][]byte{{5, 1, 'x', 1, 'y'}, {1, 3, 'b'}, {1, 1, 'x', 2, 'y'}} {
		if _, _, err := readUserPass(bytes.NewReader(bad)); err == nil {
			t.Errorf("user/pass %v accepted", bad)
		}
	}
}

func TestDatagramHeader(t *testing.T) {
	for _, dst := range []Addr{
		{IP: netip.MustParseAddr("10.77.0.1"), Port: 7777},
		{IP: netip.MustParseAddr("fd00::1"), Port: 53},
		{Name: "peer.wg-wrap.test", Port: 7777},
	} {
		b := appendDatagram(nil, dst, []byte("payload"))
		got, payload, err := parseDatagram(b)
		if err != nil || got != dst || string(payload) != "payload" {
			t.Fatalf("%v: got %v %q %v", dst, got, payload, err)
		}
	}
	frag := appendDatagram(nil, Addr{IP: netip.MustParseAddr("10.0.0.1"), Port: 1}, nil)
	frag[2] = 1
	if _, _, err := parseDatagram(frag); !errors.Is(err, errFragment) {
		t.Fatalf("fragment: %v", err)
	}
	for _, bad := range [][]byte{{}, {0, 0, 0}, {0, 1, 0, 1, 1, 2, 3, 4, 0, 1}, {0, 0, 0, 1, 1, 2}, {0, 0, 0, 3}, {0, 0, 0, 3, 5, 'a'}, {0, 0, 0, 9, 1, 2, 3, 4, 0, 1}} {
		if _, _, err := parseDatagram(bad); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}

// The parsers must never panic, never accept what they cannot re-encode
// identically, and never read past the message they parse.

func FuzzReadRequest(f *testing.F) {
	f.Add([]byte{5, 1, 0, 1, 10, 77, 0, 1, 0x1f, 0x90})
	f.Add(append([]byte{5, 1, 0, 3, 17}, append([]byte("peer.wg-wrap.test"), 0, 80)...))
	f.Add(append(append([]byte{5, 3, 0, 4}, netip.MustParseAddr("fd00::1").AsSlice()...), 0, 80))
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		cmd, dst, err := readRequest(r)
		if err != nil {
			return
		}
		used := len(in) - r.Len()
		again := appendAddr([]byte{socksVersion, cmd, in[2]}, dst)
		// IPv4-mapped IPv6 addresses come back as IPv4: compare decoded.
		cmd2, dst2, err := readRequest(bytes.NewReader(again))
		if err != nil || cmd2 != cmd || dst2 != dst {
			t.Fatalf("%x: re-encoded %x reads back as %d %v %v", in[:used], again, cmd2, dst2, err)
		}
	})
}

func FuzzReadUserPass(f *testing.F) {
	f.Add([]byte{1, 3, 'b', 'o', 'b', 4, 's', 'e', 'c', 'r'})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		user, pass, err := readUserPass(r)
		if err != nil {
			return
		}
		if used := len(in) - r.Len(); used != 3+len(user)+len(pass) {
			t.Fatalf("read %d bytes for %q/%q", used, user, pass)
		}
	})
}

func FuzzReadGreeting(f *testing.F) {
	f.Add([]byte{5, 2, 0, 2})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		methods, err := readGreeting(r)
		if err == nil && len(in)-r.Len() != 2+len(methods) {
			t.Fatalf("read past the greeting")
		}
	})
}

func FuzzParseDatagram(f *testing.F) {
	f.Add(appendDatagram(nil, Addr{IP: netip.MustParseAddr("10.77.0.1"), Port: 7777}, []byte("x")))
	f.Add(appendDatagram(nil, Addr{Name: "peer.wg-wrap.test", Port: 53}, nil))
	f.Fuzz(func(t *testing.T, in []byte) {
		dst, payload, err := parseDatagram(in)
		if err != nil {
			return
		}
		if dst.Name == "" && !dst.IP.IsValid() {
			t.Fatalf("no destination in %x", in)
		}
		again := appendDatagram(nil, dst, payload)
		dst2, payload2, err := parseDatagram(again)
		if err != nil || dst2 != dst || !bytes.Equal(payload2, payload) {
			t.Fatalf("%x does not read back", in)
		}
	})
}

// FuzzHandshake drives the whole server side of a connection with arbitrary
// client bytes: it must end (no hang, no panic) whatever it is sent.
func FuzzHandshake(f *testing.F) {
	f.Add([]byte{5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1, 0, 1})
	f.Add([]byte{5, 1, 2, 1, 1, 'u', 1, 'p', 5, 1, 0, 3, 1, 'x', 0, 1})
	f.Add([]byte{5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		for _, auth := range []*Credentials{nil, {User: "u", Password: "p"}} {
			out := runHandshake(t, auth, in)
			if len(out) > 0 && out[0] != socksVersion {
				t.Fatalf("answer %x does not start with version 5", out)
			}
		}
	})
}
