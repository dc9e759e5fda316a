package natpmp

import (
	"bytes"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestRequestsOnTheWire(t *testing.T) {
	// The bytes of RFC 6886 §3.2 and §3.3, as natpmpc sends them for
	// `natpmpc -a 1 0 udp 60` and `-a 50000 6881 tcp 7200`.
	cases := []struct {
		req  Request
		want []byte
	}{
		{Request{Op: OpExternalAddress}, []byte{0, 0}},
		{Request{Op: OpMapUDP, InternalPort: 0, ExternalPort: 1, Lifetime: 60},
			[]byte{0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 60}},
		{Request{Op: OpMapTCP, InternalPort: 6881, ExternalPort: 50000, Lifetime: 7200},
			[]byte{0, 2, 0, 0, 0x1a, 0xe1, 0xc3, 0x50, 0, 0, 0x1c, 0x20}},
	}
	for _, c := range cases {
		got := c.req.Marshal()
		if !bytes.Equal(got, c.want) {
			t.Errorf("%+v: % x, want % x", c.req, got, c.want)
		}
		back, err := ParseRequest(got)
		if err != nil || back != c.req {
			t.Errorf("%+v parsed back as %+v, %v", c.req, back, err)
		}
	}
}

func TestResponsesOnTheWire(t *testing.T) {
	addr := Response{Op: OpExternalAddress, Epoch: 0x01020304,
		ExternalAddress: netip.MustParseAddr("198.51.100.7")}
	wantAddr := []byte{0, 128, 0, 0, 1, 2, 3, 4, 198, 51, 100, 7}
	mapping := Response{Op: OpMapTCP, Epoch: 7, InternalPort: 0, ExternalPort: 40000, Lifetime: 60}
	wantMapping := []byte{0, 130, 0, 0, 0, 0, 0, 7, 0, 0, 0x9c, 0x40, 0, 0, 0, 60}
	refusal := Response{Op: OpMapUDP, Result: ResultNotAuthorized, Epoch: 9}
	for _, c := range []struct {
		resp Response
		want []byte
	}{{addr, wantAddr}, {mapping, wantMapping}} {
		got := c.resp.Marshal()
		if !bytes.Equal(got, c.want) {
			t.Errorf("%+v: % x, want % x", c.resp, got, c.want)
		}
		back, err := ParseResponse(got)
		if err != nil || back != c.resp {
			t.Errorf("%+v parsed back as %+v, %v", c.resp, back, err)
		}
	}
	back, err := ParseResponse(refusal.Marshal())
	if err != nil || back != refusal {
		t.Errorf("refusal parsed back as %+v, %v", back, err)
	}
	// A refusal may come as the header alone (8 bytes).
	back, err = ParseResponse([]byte{0, 129, 0, 5, 0, 0, 0, 3})
	if err != nil || back.Result != ResultUnsupportedOpcode || back.Epoch != 3 || back.Op != OpMapUDP {
		t.Errorf("short refusal: %+v, %v", back, err)
	}
}

func TestWhatIsNoResponse(t *testing.T) {
	for name, b := range map[string][]byte{
		"empty":                {},
		"a request":            Request{Op: OpMapUDP, Lifetime: 60}.Marshal(),
		"PCP (version 2)":      append([]byte{2, 129}, make([]byte, 22)...),
		"a header only":        {0, 128, 0, 0},
		"a success cut short":  wantShort(Response{Op: OpMapUDP, ExternalPort: 1, Lifetime: 1}, 12),
		"an address cut short": wantShort(Response{Op: OpExternalAddress}, 8),
	} {
		if r, err := ParseResponse(b); !errors.Is(err, errNotResponse) {
			t.Errorf("%s (% x): %+v, %v", name, b, r, err)
		}
	}
}

func wantShort(r Response, n int) []byte { return r.Marshal()[:n] }

func TestEachResultCodeIsOneClearLine(t *testing.T) {
	want := map[ResultCode]string{
		1: "unsupported version",
		2: "not authorized or refused",
		3: "network failure",
		4: "out of resources",
		5: "unsupported opcode",
	}
	seen := map[string]bool{}
	for code, start := range want {
		line := code.String()
		if !strings.HasPrefix(line, start+": ") || strings.Contains(line, "\n") || seen[line] {
			t.Errorf("code %d: %q", code, line)
		}
		seen[line] = true
	}
	if got := ResultCode(6).String(); got != "unknown result code 6" {
		t.Errorf("code 6: %q", got)
	}
	err := &ResultError{Request: Request{Op: OpMapTCP}, Response: Response{Op: OpMapTCP, Result: 2}}
	if got := err.Error(); got != "tcp mapping request: "+ResultCode(2).String() {
		t.Errorf("%q", got)
	}
}

func TestTheRFCScheduleWaitsTwoMinutes(t *testing.T) {
	var waits []time.Duration
	for i := range RFCRetry.Tries {
		waits = append(waits, RFCRetry.wait(i))
	}
	if waits[0] != 250*time.Millisecond || waits[8] != 64*time.Second || len(waits) != 9 {
		t.Fatalf("%v", waits)
	}
	if RFCRetry.Total() != 127750*time.Millisecond {
		t.Fatalf("total %v", RFCRetry.Total())
	}
}
