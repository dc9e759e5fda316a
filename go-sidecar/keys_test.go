package main

import (
	"bytes"
	"crypto/ecdh"
	"encoding/base64"
	"encoding/hex"
	"strings"
	"testing"
)

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// x25519 is the RFC's X25519(k, u) through crypto/ecdh, for the vectors of
// section 5.2, whose u are not public keys of any private key we hold.
func x25519(t *testing.T, k, u []byte) []byte {
	t.Helper()
	private, err := ecdh.X25519().NewPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	public, err := ecdh.X25519().NewPublicKey(u)
	if err != nil {
		t.Fatal(err)
	}
	out, err := private.ECDH(public)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// RFC 7748, section 5.2: the two single vectors (the second's u has its top
// bit set, which X25519 must ignore) and the iterated one.
func TestX25519RFC7748Vectors(t *testing.T) {
	for _, v := range []struct{ k, u, out string }{
		{
			"a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
			"e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
			"c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
		},
		{
			"4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
			"e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
			"95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
		},
	} {
		if got := hex.EncodeToString(x25519(t, unhex(t, v.k), unhex(t, v.u))); got != v.out {
			t.Errorf("X25519(%s…) = %s, want %s", v.k[:8], got, v.out)
		}
	}
	k := make([]byte, keyLen)
	k[0] = 9
	u := bytes.Clone(k)
	for i := 1; i <= 1000; i++ {
		k, u = x25519(t, k, u), k
		want := map[int]string{
			1:    "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079",
			1000: "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51",
		}[i]
		if want != "" && hex.EncodeToString(k) != want {
			t.Fatalf("after %d iterations: %x, want %s", i, k, want)
		}
	}
}

// RFC 7748, section 6.1: both public keys, and the shared secret both ways.
func TestPublicKeyRFC7748DiffieHellman(t *testing.T) {
	alice := unhex(t, "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
	bob := unhex(t, "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
	alicePub, err := publicKey(alice)
	if err != nil {
		t.Fatal(err)
	}
	bobPub, err := publicKey(bob)
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(alicePub); got != "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a" {
		t.Errorf("Alice's public key %s", got)
	}
	if got := hex.EncodeToString(bobPub); got != "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f" {
		t.Errorf("Bob's public key %s", got)
	}
	const shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
	if got := hex.EncodeToString(x25519(t, alice, bobPub)); got != shared {
		t.Errorf("Alice's shared secret %s", got)
	}
	if got := hex.EncodeToString(x25519(t, bob, alicePub)); got != shared {
		t.Errorf("Bob's shared secret %s", got)
	}
}

func runKeyCommand(args []string, stdin string) (code int, ok bool, stdout, stderr string) {
	var out, errOut bytes.Buffer
	code, ok = keyCommand(args, strings.NewReader(stdin), &out, &errOut)
	return code, ok, out.String(), errOut.String()
}

func TestPubkeyReadsStdinLikeWg(t *testing.T) {
	alice := base64.StdEncoding.EncodeToString(unhex(t, "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
	const want = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=\n" // RFC 7748 6.1, in base64
	for _, input := range []string{alice, alice + "\n", "  " + alice + "\r\n"} {
		code, ok, out, errOut := runKeyCommand([]string{"pubkey"}, input)
		if !ok || code != exitOK || out != want || errOut != "" {
			t.Errorf("pubkey(%q) = %d %v %q %q", input, code, ok, out, errOut)
		}
	}
}

func TestPubkeyRefusesWhatIsNotAKeyWithoutQuotingIt(t *testing.T) {
	secretish := "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA=="
	for _, input := range []string{
		"", "\n", "not base64!", secretish, // 35 bytes: not a key
		base64.StdEncoding.EncodeToString(make([]byte, 31)),
		strings.Repeat("A", 10000),
	} {
		code, ok, out, errOut := runKeyCommand([]string{"pubkey"}, input)
		if !ok || code != exitFailure || out != "" || strings.Count(errOut, "\n") != 1 ||
			!strings.HasPrefix(errOut, progName+": pubkey: ") {
			t.Errorf("pubkey(%.20q) = %d %v %q %q", input, code, ok, out, errOut)
		}
		if len(input) > 8 && strings.Contains(errOut, input) {
			t.Errorf("the error quotes the input: %q", errOut)
		}
	}
}

func TestGenkeyGivesClampedKeysThatPubkeyTakes(t *testing.T) {
	seen := map[string]bool{}
	for range 20 {
		code, ok, out, errOut := runKeyCommand([]string{"genkey"}, "")
		if !ok || code != exitOK || errOut != "" || !strings.HasSuffix(out, "\n") {
			t.Fatalf("genkey = %d %v %q %q", code, ok, out, errOut)
		}
		key, err := base64.StdEncoding.DecodeString(strings.TrimSuffix(out, "\n"))
		if err != nil || len(key) != keyLen {
			t.Fatalf("genkey printed %q", out)
		}
		if key[0]&7 != 0 || key[31]&128 != 0 || key[31]&64 == 0 {
			t.Fatalf("not clamped: %x", key)
		}
		if seen[out] {
			t.Fatalf("the same key twice: %q", out)
		}
		seen[out] = true
		if code, _, pub, _ := runKeyCommand([]string{"pubkey"}, out); code != exitOK || len(pub) != 45 {
			t.Fatalf("pubkey of a generated key: %d %q", code, pub)
		}
	}
}

func TestKeyCommandDispatch(t *testing.T) {
	if _, ok, _, _ := runKeyCommand([]string{"--uapi", "/x"}, ""); ok {
		t.Error("the sidecar's own arguments were taken for a key command")
	}
	if _, ok, _, _ := runKeyCommand(nil, ""); ok {
		t.Error("no arguments taken for a key command")
	}
	code, ok, out, errOut := runKeyCommand([]string{"pubkey", "AAAA"}, "")
	if !ok || code != exitUsage || out != "" || !strings.Contains(errOut, "takes no arguments") {
		t.Errorf("pubkey with an argument: %d %v %q %q", code, ok, out, errOut)
	}
}
