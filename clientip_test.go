// Tests of client address normalisation and the allow-list.

package breakglass

import (
	"net/netip"
	"strings"
	"testing"
)

func TestAllowListMatches(t *testing.T) {
	for name, c := range map[string]struct {
		list []string
		want map[string]bool
	}{
		"exact IPs and CIDRs": {[]string{"10.0.0.0/8", "192.0.2.7", "::1", "2001:db8::/32", "::ffff:198.51.100.0/120"}, map[string]bool{
			"10.1.2.3":          true,
			"11.0.0.1":          false,
			"192.0.2.7":         true,
			"192.0.2.8":         false,
			"::1":               true,
			"2001:db8:5::1":     true,
			"2001:db9::1":       false,
			"::ffff:10.9.9.9":   true, // mapped client, IPv4 entry
			"198.51.100.42":     true, // IPv4 client, mapped entry
			"fe80::1%eth0":      false,
			"::ffff:192.0.2.7":  true,
			"::ffff:192.0.2.70": false,
		}},
		"the default is loopback only": {defaultAllowedIPs, map[string]bool{"127.0.0.1": true, "::1": true, "127.0.0.2": false, "10.0.0.1": false}},
	} {
		list, err := parseAllowList(c.list)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for ip, want := range c.want {
			a, ok := parseClientIP(ip)
			if !ok {
				t.Fatalf("%s did not parse", ip)
			}
			if got := allowed(list, a); got != want {
				t.Errorf("%s: allowed(%s) = %v, want %v", name, ip, got, want)
			}
		}
	}
}

func TestAllowListErrorsNameTheEntry(t *testing.T) {
	for _, bad := range []string{"10.0.0.0/99", "not-an-ip", "10.0.0.256", "::ffff:1.2.3.4/64"} {
		_, err := parseAllowList([]string{"127.0.0.1", bad})
		if err == nil {
			t.Errorf("%q accepted", bad)
			continue
		}
		if !strings.Contains(err.Error(), "allowed_ips") || !strings.Contains(err.Error(), bad) {
			t.Errorf("error %q does not name the field and %q", err, bad)
		}
	}
}

func TestLimiterKeyOfIPv6IsItsSlash64(t *testing.T) {
	got := limiterKey(netip.MustParseAddr("2001:db8:aa:bb:1:2:3:4"))
	if want := netip.MustParseAddr("2001:db8:aa:bb::"); got != want {
		t.Fatalf("limiterKey = %v, want %v", got, want)
	}
	v4 := netip.MustParseAddr("192.0.2.1")
	if limiterKey(v4) != v4 {
		t.Fatal("an IPv4 key changed")
	}
}
