package proxy

import (
	"crypto/sha256"
	"crypto/subtle"
)

// Credentials are the username and password clients must give: SOCKS5
// username/password (RFC 1929) and HTTP proxy Basic authentication.
type Credentials struct {
	User     string
	Password string
}

// Match compares in constant time, whatever the lengths: the inputs are
// hashed first, so neither their content nor their length shows in timing.
func (c *Credentials) Match(user, password string) bool {
	hu, hp := sha256.Sum256([]byte(user)), sha256.Sum256([]byte(password))
	wu, wp := sha256.Sum256([]byte(c.User)), sha256.Sum256([]byte(c.Password))
	return subtle.ConstantTimeCompare(hu[:], wu[:])&subtle.ConstantTimeCompare(hp[:], wp[:]) == 1
}
