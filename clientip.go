// Client addresses: how a request's client is identified, allowed and counted.

package breakglass

import (
	"fmt"
	"net/http"
	"net/netip"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// defaultAllowedIPs is the allow-list when none is configured: loopback only.
var defaultAllowedIPs = []string{"127.0.0.1", "::1"}

// clientAddr returns the client's address as Caddy determined it: the
// connection's peer, or the client behind a configured trusted proxy. Headers
// are never read here; Caddy has already decided whether they can be trusted.
func clientAddr(r *http.Request) (netip.Addr, bool) {
	s, _ := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string)
	if s == "" {
		// Not inside a Caddy server (or an unusual transport): fall back to the
		// connection itself.
		s = r.RemoteAddr
		if ap, err := netip.ParseAddrPort(s); err == nil {
			return normalizeAddr(ap.Addr()), true
		}
	}
	return parseClientIP(s)
}

// parseClientIP parses an address as Caddy's client_ip holds it and
// normalises it (see normalizeAddr).
func parseClientIP(s string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, false
	}
	return normalizeAddr(a), true
}

// normalizeAddr makes one address of each client: an IPv4-mapped IPv6 address
// becomes its IPv4 address, and an IPv6 zone is dropped.
func normalizeAddr(a netip.Addr) netip.Addr {
	return a.Unmap().WithZone("")
}

// limiterKey is what the rate limiter counts: an IPv4 address itself, and an
// IPv6 address by its /64, because a single IPv6 host is usually given a
// whole /64 and could otherwise rotate through it.
func limiterKey(a netip.Addr) netip.Addr {
	if a.Is4() {
		return a
	}
	p, err := a.Prefix(64)
	if err != nil {
		return a
	}
	return p.Addr()
}

// parseAllowList turns allowed_ips entries (exact IPs or CIDRs) into
// prefixes. Errors name the offending entry.
func parseAllowList(entries []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(entries))
	for _, e := range entries {
		e = strings.TrimSpace(e)
		if strings.Contains(e, "/") {
			p, err := netip.ParsePrefix(e)
			if err != nil {
				return nil, fmt.Errorf("allowed_ips: %q: %v", e, err)
			}
			if p.Addr().Is4In6() {
				// ::ffff:10.0.0.0/104 is 10.0.0.0/8.
				bits := p.Bits() - 96
				if bits < 0 {
					return nil, fmt.Errorf("allowed_ips: %q: an IPv4-mapped prefix needs at least 96 bits", e)
				}
				p = netip.PrefixFrom(p.Addr().Unmap(), bits)
			}
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(e)
		if err != nil {
			return nil, fmt.Errorf("allowed_ips: %q: not an IP address or CIDR", e)
		}
		a = normalizeAddr(a)
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// allowed reports whether a (already normalised) is in the allow-list.
func allowed(list []netip.Prefix, a netip.Addr) bool {
	for _, p := range list {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
