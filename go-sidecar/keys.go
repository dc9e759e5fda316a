package main

// `wg-wrap-sidecar genkey` and `wg-wrap-sidecar pubkey`, as `wg genkey` and
// `wg pubkey` do them: base64 keys, one per line, the private key only ever
// on stdin. wg-wrap derives the public key of a user's real private key
// here, with Go's crypto/ecdh (a constant-time X25519), rather than with
// arithmetic of its own in Python.

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
)

const keyLen = 32

// maxKeyInput bounds what pubkey reads: a key is 44 base64 characters and a
// newline; anything much longer is not a key.
const maxKeyInput = 256

// keyCommand runs genkey or pubkey; ok is false when args name neither.
func keyCommand(args []string, stdin io.Reader, stdout, stderr io.Writer) (code int, ok bool) {
	if len(args) == 0 || (args[0] != "genkey" && args[0] != "pubkey") {
		return 0, false
	}
	command := args[0]
	if len(args) > 1 {
		fmt.Fprintf(stderr, "%s: %s takes no arguments (the key comes on stdin)\n", progName, command)
		return exitUsage, true
	}
	var line string
	var err error
	if command == "genkey" {
		line, err = genkey()
	} else {
		line, err = pubkey(stdin)
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s: %s: %v\n", progName, command, err)
		return exitFailure, true
	}
	if _, err := io.WriteString(stdout, line+"\n"); err != nil {
		fmt.Fprintf(stderr, "%s: %s: writing the key: %v\n", progName, command, err)
		return exitFailure, true
	}
	return exitOK, true
}

// genkey returns a new private key, clamped as `wg genkey` clamps it.
func genkey() (string, error) {
	key := make([]byte, keyLen)
	defer clear(key)
	if _, err := rand.Read(key); err != nil {
		return "", fmt.Errorf("reading random bytes: %w", err)
	}
	key[0] &= 248
	key[31] = (key[31] & 127) | 64
	return base64.StdEncoding.EncodeToString(key), nil
}

// pubkey reads a base64 private key from r and returns its public key.
func pubkey(r io.Reader) (string, error) {
	input, err := io.ReadAll(io.LimitReader(r, maxKeyInput+1))
	defer clear(input)
	if err != nil {
		return "", fmt.Errorf("reading the private key: %w", err)
	}
	if len(input) > maxKeyInput {
		return "", errors.New("stdin is too long for a key")
	}
	private, err := decodeKey(bytes.TrimSpace(input))
	defer clear(private)
	if err != nil {
		return "", err
	}
	public, err := publicKey(private)
	if err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(public), nil
}

// decodeKey accepts exactly what wg does: 32 bytes in standard base64.
// Errors never quote the input: it is a secret.
func decodeKey(text []byte) ([]byte, error) {
	key := make([]byte, base64.StdEncoding.DecodedLen(len(text)))
	n, err := base64.StdEncoding.Decode(key, text)
	if err != nil || n != keyLen {
		clear(key)
		return nil, errors.New("stdin is not a base64 WireGuard key (44 characters ending in '=')")
	}
	return key[:keyLen], nil
}

// publicKey is X25519(private, 9), the scalar clamped as RFC 7748 says.
func publicKey(private []byte) ([]byte, error) {
	key, err := ecdh.X25519().NewPrivateKey(private)
	if err != nil {
		return nil, fmt.Errorf("private key: %w", err)
	}
	return key.PublicKey().Bytes(), nil
}
