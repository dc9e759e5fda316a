package fdbind

import (
	"encoding/binary"
	"errors"
	"net"
	"unsafe"

	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// UDP segmentation offload (GSO, UDP_SEGMENT on send) and receive offload
// (GRO, UDP_GRO on receive): one syscall-level datagram carries many
// same-sized WireGuard packets, which is most of StdNetBind's speed on Linux.

const (
	// Exceeding these gives EMSGSIZE: the 16-bit length fields minus the
	// UDP header, and for IPv4 also the IPv4 header (the IPv6 payload
	// length excludes the fixed header).
	maxIPv4Payload = 1<<16 - 1 - 20 - 8
	maxIPv6Payload = 1<<16 - 1 - 8

	// The kernel refuses more segments per GSO send (UDP_MAX_SEGMENTS) and
	// never coalesces more on receive.
	maxSegments = 64

	// Payload size of the UDP_SEGMENT / UDP_GRO control messages.
	sizeofSegmentSize = 2
)

// oobSize is the control buffer given to every message: room for one
// UDP_SEGMENT/UDP_GRO message plus slack for a pktinfo message, in case the
// host side enabled IP_PKTINFO/IPV6_RECVPKTINFO on the socket (ignored).
var oobSize = unix.CmsgSpace(sizeofSegmentSize) + unix.CmsgSpace(unix.SizeofInet6Pktinfo)

// putSegmentSize writes a UDP_SEGMENT control message into the start of
// oob's capacity and returns the resliced buffer.
func putSegmentSize(oob []byte, size uint16) []byte {
	return putUDPControl(oob, unix.UDP_SEGMENT, size)
}

// putUDPControl writes a SOL_UDP control message of type typ carrying a
// segment size (UDP_SEGMENT on send; UDP_GRO has the same layout on receive).
func putUDPControl(oob []byte, typ int32, size uint16) []byte {
	space := unix.CmsgSpace(sizeofSegmentSize)
	if cap(oob) < space {
		return oob[:0]
	}
	oob = oob[:space]
	clear(oob)
	hdr := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	hdr.Level = unix.SOL_UDP
	hdr.Type = typ
	hdr.SetLen(unix.CmsgLen(sizeofSegmentSize))
	binary.NativeEndian.PutUint16(oob[unix.CmsgLen(0):], size)
	return oob
}

// segmentSize returns the UDP_GRO segment size found in the control data of
// a received message, or 0 when the message was not coalesced.
func segmentSize(oob []byte) (int, error) {
	for len(oob) >= unix.SizeofCmsghdr {
		hdr, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			return 0, err
		}
		if hdr.Level == unix.SOL_UDP && hdr.Type == unix.UDP_GRO && len(data) >= sizeofSegmentSize {
			return int(binary.NativeEndian.Uint16(data)), nil
		}
		oob = rest
	}
	return 0, nil
}

// coalesce fills msgs from bufs for one GSO send to addr, and returns how many
// messages it used. A run of packets of the same size (the last one may be
// shorter, and then ends the run) is appended into the first packet's buffer,
// which must have spare capacity (wireguard-go's buffers do), and marked
// with UDP_SEGMENT.
func coalesce(bufs [][]byte, msgs []ipv6.Message, addr net.Addr, maxPayload int) int {
	base := -1
	var segSize, segCount int
	closed := false // the current run ended with a short packet
	finish := func() {
		if base >= 0 && segCount > 1 {
			msgs[base].OOB = putSegmentSize(msgs[base].OOB, uint16(segSize))
		}
	}
	for _, buf := range bufs {
		if base >= 0 && !closed && segCount < maxSegments {
			cur := msgs[base].Buffers[0]
			if len(buf) <= segSize &&
				len(cur)+len(buf) <= maxPayload &&
				len(buf) <= cap(cur)-len(cur) {
				msgs[base].Buffers[0] = append(cur, buf...)
				segCount++
				closed = len(buf) < segSize
				continue
			}
		}
		finish()
		base++
		msgs[base].Buffers[0] = buf
		msgs[base].OOB = msgs[base].OOB[:0]
		msgs[base].Addr = addr
		segSize, segCount, closed = len(buf), 1, false
	}
	finish()
	return base + 1
}

// errSplitOverflow means coalesced messages held more packets than there was
// room for in front of them.
var errSplitOverflow = errors.New("fdbind: splitting UDP_GRO message overflows the batch")

// split expands the messages msgs[first:] (as filled by a batch read, N = 0
// ends the batch) into one message per packet, written from msgs[0] on, and
// returns the number of packets. Each message's buffer is msgs[i].Buffers[0];
// packets move forward, never onto a message not yet split.
func split(msgs []ipv6.Message, first int) (int, error) {
	n := 0
	for i := first; i < len(msgs); i++ {
		msg := &msgs[i]
		if msg.N == 0 {
			break
		}
		size, err := segmentSize(msg.OOB[:msg.NN])
		if err != nil {
			return n, err
		}
		if size <= 0 {
			size = msg.N
		}
		total, addr := msg.N, msg.Addr
		for start := 0; start < total; start += size {
			if n > i {
				return n, errSplitOverflow
			}
			end := min(start+size, total)
			// copy is a memmove: n == i overlaps safely.
			msgs[n].N = copy(msgs[n].Buffers[0], msg.Buffers[0][start:end])
			msgs[n].Addr = addr
			n++
		}
		if n-1 != i {
			msg.N = 0
		}
	}
	return n, nil
}

// shouldDisableGSO reports whether a send error means the path cannot do
// UDP_SEGMENT: EIO when the device lacks TX checksum offload, and a spurious
// EINVAL that some 6.x kernels return for a short tail segment.
func shouldDisableGSO(err error) bool {
	return errors.Is(err, unix.EIO) || errors.Is(err, unix.EINVAL)
}
