package fdbind

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"

	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
)

func testMessages(n int) []ipv6.Message {
	msgs := make([]ipv6.Message, n)
	for i := range msgs {
		msgs[i].Buffers = make(net.Buffers, 1)
		msgs[i].OOB = make([]byte, 0, oobSize)
	}
	return msgs
}

func packet(size int, fill byte) []byte {
	b := make([]byte, size, 65535)
	for i := range b {
		b[i] = fill
	}
	return b
}

func TestCoalesceGroupsRunsOfEqualSize(t *testing.T) {
	addr := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}
	bufs := [][]byte{
		packet(100, 1), packet(100, 2), packet(40, 3), // run ended by a short tail
		packet(100, 4), packet(120, 5), // larger packet cannot join the run
		packet(120, 6),
	}
	msgs := testMessages(len(bufs))
	n := coalesce(bufs, msgs, addr, maxIPv4Payload)
	wantLens := []int{240, 100, 240}
	wantSeg := []int{100, 0, 120}
	if n != len(wantLens) {
		t.Fatalf("coalesce used %d messages, want %d", n, len(wantLens))
	}
	for i := range n {
		if got := len(msgs[i].Buffers[0]); got != wantLens[i] {
			t.Errorf("message %d: %d bytes, want %d", i, got, wantLens[i])
		}
		seg := 0
		if len(msgs[i].OOB) > 0 {
			h, data, _, err := unix.ParseOneSocketControlMessage(msgs[i].OOB)
			if err != nil || h.Level != unix.SOL_UDP || h.Type != unix.UDP_SEGMENT {
				t.Fatalf("message %d: bad control message %+v %v", i, h, err)
			}
			seg = int(binary.NativeEndian.Uint16(data))
		}
		if seg != wantSeg[i] {
			t.Errorf("message %d: segment size %d, want %d", i, seg, wantSeg[i])
		}
	}
}

func TestCoalesceRespectsSegmentAndSizeLimits(t *testing.T) {
	addr := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}
	bufs := make([][]byte, 100)
	for i := range bufs {
		bufs[i] = packet(100, byte(i))
	}
	msgs := testMessages(len(bufs))
	if n := coalesce(bufs, msgs, addr, maxIPv4Payload); n != 2 {
		t.Fatalf("100 packets coalesced into %d messages, want 2 (64 + 36)", n)
	}
	if got := len(msgs[0].Buffers[0]); got != maxSegments*100 {
		t.Fatalf("first message %d bytes, want %d", got, maxSegments*100)
	}
	// Payload limit: 1400-byte packets, at most 46 fit into 65507 bytes.
	for i := range bufs[:60] {
		bufs[i] = packet(1400, byte(i))
	}
	msgs = testMessages(60)
	if n := coalesce(bufs[:60], msgs, addr, maxIPv4Payload); n != 2 {
		t.Fatalf("60 big packets coalesced into %d messages, want 2", n)
	}
	if got := len(msgs[0].Buffers[0]); got > maxIPv4Payload {
		t.Fatalf("coalesced message of %d bytes exceeds %d", got, maxIPv4Payload)
	}
}

func TestSplitExpandsGROMessages(t *testing.T) {
	msgs := testMessages(8)
	for i := range msgs {
		msgs[i].Buffers[0] = make([]byte, 65535)
	}
	from := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 7}
	// Two received messages at the tail: 3 segments of 10 (last short: 5),
	// and one plain datagram of 4 bytes.
	first := 6
	payload := append(bytes.Repeat([]byte{1}, 10), bytes.Repeat([]byte{2}, 10)...)
	payload = append(payload, bytes.Repeat([]byte{3}, 5)...)
	msgs[6].N = copy(msgs[6].Buffers[0], payload)
	oob := putUDPControl(make([]byte, 0, oobSize), unix.UDP_GRO, 10)
	msgs[6].OOB, msgs[6].NN, msgs[6].Addr = oob[:cap(oob)], len(oob), from
	msgs[7].N = copy(msgs[7].Buffers[0], []byte{4, 4, 4, 4})
	msgs[7].Addr = from
	n, err := split(msgs, first)
	if err != nil {
		t.Fatal(err)
	}
	want := [][]byte{bytes.Repeat([]byte{1}, 10), bytes.Repeat([]byte{2}, 10), bytes.Repeat([]byte{3}, 5), {4, 4, 4, 4}}
	if n != len(want) {
		t.Fatalf("split into %d packets, want %d", n, len(want))
	}
	for i := range want {
		if got := msgs[i].Buffers[0][:msgs[i].N]; !bytes.Equal(got, want[i]) {
			t.Errorf("packet %d = %v, want %v", i, got, want[i])
		}
		if msgs[i].Addr != from {
			t.Errorf("packet %d lost its source address", i)
		}
	}
}

func TestSplitReportsOverflow(t *testing.T) {
	msgs := testMessages(2)
	for i := range msgs {
		msgs[i].Buffers[0] = make([]byte, 100)
	}
	oob := putUDPControl(make([]byte, 0, oobSize), unix.UDP_GRO, 10)
	msgs[1].N, msgs[1].OOB, msgs[1].NN = 30, oob, len(oob)
	if _, err := split(msgs, 1); !errors.Is(err, errSplitOverflow) {
		t.Fatalf("split error = %v, want errSplitOverflow", err)
	}
}

// TestKernelSeesOneGSOSend checks that Send really uses UDP_SEGMENT: a
// receiver with UDP_GRO gets the whole run as one coalesced datagram.
func TestKernelSeesOneGSOSend(t *testing.T) {
	tx, err := New(hostSocket(t, unix.AF_INET6, any6))
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Release()
	if !tx.txOffload {
		t.Fatal("the kernel lacks UDP_SEGMENT (GSO, Linux >= 4.18): this test needs it")
	}
	openBind(t, tx)
	peer := newPeerSocket(t, lo4)
	if err := unix.SetsockoptInt(peer.fd, unix.IPPROTO_UDP, unix.UDP_GRO, 1); err != nil {
		t.Fatalf("the kernel refuses UDP_GRO (Linux >= 5.0 needed): %v", err)
	}
	bufs := [][]byte{packet(500, 1), packet(500, 2), packet(500, 3)}
	ep, _ := tx.ParseEndpoint(peer.addr.String())
	if err := tx.Send(bufs, ep); err != nil {
		t.Fatal(err)
	}
	buf, oob := make([]byte, 65535), make([]byte, 128)
	n, oobn, _, _, err := unix.Recvmsg(peer.fd, buf, oob, 0)
	if err != nil {
		t.Fatal(err)
	}
	seg, err := segmentSize(oob[:oobn])
	if err != nil {
		t.Fatal(err)
	}
	if n != 1500 || seg != 500 {
		t.Fatalf("received %d bytes with segment size %d, want 1500 in segments of 500", n, seg)
	}
}

// failingBatch fails any send carrying control data (a GSO send) with errno,
// and records what it was asked to send.
type failingBatch struct {
	errno unix.Errno
	sent  [][]byte
}

func (f *failingBatch) ReadBatch([]ipv6.Message, int) (int, error) { return 0, net.ErrClosed }

func (f *failingBatch) WriteBatch(ms []ipv6.Message, _ int) (int, error) {
	for i, m := range ms {
		if len(m.OOB) > 0 {
			return i, &net.OpError{Op: "write", Err: os.NewSyscallError("sendmmsg", f.errno)}
		}
		f.sent = append(f.sent, bytes.Clone(m.Buffers[0]))
	}
	return len(ms), nil
}

func TestSendFallsBackWithoutGSOOnEIOAndEINVAL(t *testing.T) {
	for _, errno := range []unix.Errno{unix.EIO, unix.EINVAL} {
		t.Run(errno.Error(), func(t *testing.T) {
			b, err := newBind(hostSocket(t, unix.AF_INET6, any6), false)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Release()
			fb := &failingBatch{errno: errno}
			b.batch, b.txOffload = fb, true
			bufs := [][]byte{packet(100, 1), packet(100, 2), packet(100, 3)}
			err = b.Send(bufs, newEndpoint(netip.AddrPortFrom(lo4, 9)))
			var gsoErr conn.ErrUDPGSODisabled
			if !errors.As(err, &gsoErr) || gsoErr.RetryErr != nil {
				t.Fatalf("Send error = %v, want ErrUDPGSODisabled with a successful retry", err)
			}
			if b.txOffload {
				t.Fatal("GSO still enabled after the failure")
			}
			if len(fb.sent) != 3 {
				t.Fatalf("retry sent %d packets, want 3", len(fb.sent))
			}
			for i, p := range fb.sent {
				if !bytes.Equal(p, packet(100, byte(i+1))) {
					t.Fatalf("retried packet %d corrupted", i)
				}
			}
			// Later sends go straight out without GSO.
			fb.sent = nil
			if err := b.Send(bufs, newEndpoint(netip.AddrPortFrom(lo4, 9))); err != nil || len(fb.sent) != 3 {
				t.Fatalf("second Send: %v, %d packets", err, len(fb.sent))
			}
		})
	}
}
